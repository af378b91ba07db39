-- One row per message, mailing totals kept from it, machine opens and clicks, suppressions.
--
-- 1. `events.machine` / `events.machine_rule`: whether an open or a click was a machine's
--    fetch and the rule that said so (workers.events.machine). Stored opens and clicks get the
--    per-event verdict here with Apple's built-in network only; `ingest messages rebuild`
--    applies INGEST_MACHINE_NETWORKS too.
-- 2. `messages`: one row per message id, kept by the workers in the transaction that stores
--    its events, from the rows that were new (workers.storage.messages); built here for the
--    events already stored, by messages_rebuild(), which `ingest messages rebuild` calls too.
-- 3. `mailing_totals`: the sums `mailing_stats` reads, kept by statement triggers on
--    `messages` (each statement's old and new rows) plus the events that carry a mailing id
--    and no message id (unsubscribe webhooks), added by the workers. Several rows per mailing
--    (`shard`: the backend's pid modulo 16), so that workers storing events of one mailing do
--    not wait on each other's row lock; `mailing_stats` sums them.
-- 4. `mailing_stats` reads `mailing_totals` (same columns, then human opens and clicks and the
--    mailing's first send and last event); `suppressions` reads `events`.
-- 5. `event_fields(events)`: the fields as sent, from a payload the workers store without the
--    fields a column holds exactly (workers.events.compact). Rows stored before keep their
--    whole payload, which it gives back as it is.

ALTER TABLE events ADD COLUMN machine boolean, ADD COLUMN machine_rule text;

-- The fields of an event as Copernica sent them: the stored payload, and the fields left out of
-- it because a column holds them exactly (named in its `~` key; workers.events.compact).
CREATE FUNCTION event_fields(e events) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT CASE WHEN jsonb_typeof(e.payload -> '~') = 'string' THEN
    (e.payload - '~') || coalesce((
        SELECT jsonb_object_agg(
            CASE c WHEN 'i' THEN 'id' WHEN 'y' THEN 'type' WHEN 'T' THEN 'time' WHEN 'r' THEN 'recipient' WHEN 'e' THEN 'email' WHEN 'p' THEN 'ip' WHEN 'u' THEN 'useragent' WHEN 'h' THEN 'header' WHEN 'o' THEN 'original' WHEN 'l' THEN 'linkinfo' WHEN 'g' THEN 'tags' WHEN 'M' THEN 'mailing' WHEN 'm' THEN 'mailingid' WHEN 'P' THEN 'profile' WHEN 'q' THEN 'profileid' WHEN 'S' THEN 'subprofile' WHEN 's' THEN 'subprofileid' WHEN 'D' THEN 'database' WHEN 'd' THEN 'databaseid' WHEN 'C' THEN 'collection' WHEN 'c' THEN 'collectionid' WHEN 'E' THEN 'template' WHEN 't' THEN 'templateid' WHEN 'x' THEN 'description' END,
            CASE WHEN form = 'n' THEN to_jsonb((CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END)::numeric) ELSE to_jsonb(CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END) END)
        FROM (SELECT substr(e.payload ->> '~', i, 1) AS c, substr(e.payload ->> '~', i + 1, 1) AS form
              FROM generate_series(1, length(e.payload ->> '~'), 2) AS i) AS codes
    ), '{}'::jsonb)
ELSE e.payload END
$fn$;

CREATE TABLE messages (
    message_id          text PRIMARY KEY,
    mailing_id          bigint,
    recipient           text,
    profile_id          bigint,
    sent_at             timestamptz,
    delivered_at        timestamptz,
    opened_at           timestamptz,  -- first open
    clicked_at          timestamptz,  -- first click
    bounced_at          timestamptz,  -- first bounce or failure
    unsubscribed_at     timestamptz,
    complained_at       timestamptz,
    last_event_at       timestamptz NOT NULL,
    sent                integer NOT NULL DEFAULT 0,
    delivered           integer NOT NULL DEFAULT 0,
    opens               integer NOT NULL DEFAULT 0,
    clicks              integer NOT NULL DEFAULT 0,
    human_opens         integer NOT NULL DEFAULT 0,
    human_clicks        integer NOT NULL DEFAULT 0,
    bounces             integer NOT NULL DEFAULT 0,
    failures            integer NOT NULL DEFAULT 0,
    deferrals           integer NOT NULL DEFAULT 0,
    autoreplies         integer NOT NULL DEFAULT 0,
    unsubscribes        integer NOT NULL DEFAULT 0,
    complaints          integer NOT NULL DEFAULT 0,
    last_bounce_at      timestamptz,  -- the latest bounce or failure, and its reason
    last_bounce_reason  text
) WITH (fillfactor = 70);
-- Room on each page for the updates a message's later events make (HOT: no new index entry),
-- and no index but the primary key: `mailing_stats` reads `mailing_totals`, and nothing
-- documented reads messages by mailing.

CREATE TABLE mailing_totals (
    mailing_id          bigint   NOT NULL,
    shard               smallint NOT NULL,
    sent                bigint NOT NULL DEFAULT 0,
    delivered           bigint NOT NULL DEFAULT 0,
    opens               bigint NOT NULL DEFAULT 0,
    unique_opens        bigint NOT NULL DEFAULT 0,
    clicks              bigint NOT NULL DEFAULT 0,
    unique_clicks       bigint NOT NULL DEFAULT 0,
    bounces             bigint NOT NULL DEFAULT 0,
    failures            bigint NOT NULL DEFAULT 0,
    deferrals           bigint NOT NULL DEFAULT 0,
    unsubscribes        bigint NOT NULL DEFAULT 0,
    complaints          bigint NOT NULL DEFAULT 0,
    autoreplies         bigint NOT NULL DEFAULT 0,
    human_opens         bigint NOT NULL DEFAULT 0,
    unique_human_opens  bigint NOT NULL DEFAULT 0,
    human_clicks        bigint NOT NULL DEFAULT 0,
    first_sent_at       timestamptz,
    last_event_at       timestamptz,
    PRIMARY KEY (mailing_id, shard)
);

-- The statement that adds rows of `source` (a query giving s: 1 to add, -1 to take away,
-- mailing_id, the counts of `messages`, unique_opens, unique_clicks, unique_human_opens, sent_at,
-- last_event_at) to their mailings' totals. Used by the trigger below and by the workers for
-- events without a message id.
CREATE FUNCTION mailing_totals_upsert(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
INSERT INTO mailing_totals AS t
SELECT mailing_id, (pg_backend_pid() %% 16)::smallint, sum(s * sent), sum(s * delivered), sum(s * opens),
       sum(s * unique_opens), sum(s * clicks), sum(s * unique_clicks), sum(s * bounces), sum(s * failures),
       sum(s * deferrals), sum(s * unsubscribes), sum(s * complaints), sum(s * autoreplies), sum(s * human_opens),
       sum(s * unique_human_opens), sum(s * human_clicks),
       min(sent_at) FILTER (WHERE s > 0), max(last_event_at) FILTER (WHERE s > 0)
FROM (%s) AS changed
WHERE mailing_id IS NOT NULL
GROUP BY mailing_id
ON CONFLICT (mailing_id, shard) DO UPDATE SET
    sent = t.sent + excluded.sent, delivered = t.delivered + excluded.delivered,
    opens = t.opens + excluded.opens, unique_opens = t.unique_opens + excluded.unique_opens,
    clicks = t.clicks + excluded.clicks, unique_clicks = t.unique_clicks + excluded.unique_clicks,
    bounces = t.bounces + excluded.bounces, failures = t.failures + excluded.failures,
    deferrals = t.deferrals + excluded.deferrals, unsubscribes = t.unsubscribes + excluded.unsubscribes,
    complaints = t.complaints + excluded.complaints, autoreplies = t.autoreplies + excluded.autoreplies,
    human_opens = t.human_opens + excluded.human_opens,
    unique_human_opens = t.unique_human_opens + excluded.unique_human_opens,
    human_clicks = t.human_clicks + excluded.human_clicks,
    first_sent_at = least(t.first_sent_at, excluded.first_sent_at),
    last_event_at = greatest(t.last_event_at, excluded.last_event_at)
$q$, source)
$fn$;

-- A statement's inserted, updated or deleted messages, in their mailings' totals: each old row
-- taken away, each new row added (its old and new mailing may differ: attributed late).
CREATE FUNCTION messages_totals_trigger() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    unique_cols constant text := ', (opens > 0)::int AS unique_opens, (clicks > 0)::int AS unique_clicks,'
                                 ' (human_opens > 0)::int AS unique_human_opens';
    old_part constant text := 'SELECT -1 AS s, *' || unique_cols || ' FROM old_rows';
    new_part constant text := 'SELECT 1 AS s, *' || unique_cols || ' FROM new_rows';
BEGIN
    EXECUTE mailing_totals_upsert(CASE TG_OP WHEN 'INSERT' THEN new_part
                                             WHEN 'DELETE' THEN old_part
                                             ELSE old_part || ' UNION ALL ' || new_part END);
    RETURN NULL;
END $fn$;

CREATE TRIGGER messages_totals_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_totals_trigger();
CREATE TRIGGER messages_totals_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_totals_trigger();
CREATE TRIGGER messages_totals_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_totals_trigger();

-- The click rules that need a message's other events (workers.events.machine): for the clicks of
-- `ids`, `click_near_delivery` (before, or within 5 s of, the delivery; of the sending when no
-- delivery is stored) and `link_burst` (another link of the message clicked within 1 s). A
-- per-event rule (apple_proxy, operator_network) stays; a click these rules no longer catch
-- (an earlier delivery arrived) goes back to its per-event verdict. Then each message's
-- human_clicks: its clicks with machine false. Order of arrival does not matter: everything is
-- recomputed from the stored events whenever a click or a delivery of the message arrives.
CREATE FUNCTION messages_apply_click_rules(ids text[]) RETURNS void LANGUAGE sql AS $fn$
UPDATE events e SET machine = v.machine, machine_rule = v.rule
FROM (
    SELECT id, occurred_at, rule,
           CASE WHEN rule IS NOT NULL THEN true WHEN ip IS NULL AND user_agent IS NULL THEN NULL ELSE false END AS machine
    FROM (
        SELECT c.id, c.occurred_at, c.ip, c.user_agent,
               CASE
                   WHEN c.machine_rule IN ('apple_proxy', 'operator_network') THEN c.machine_rule
                   WHEN c.occurred_at < coalesce(m.delivered_at, m.sent_at) + interval '5 seconds'
                       THEN 'click_near_delivery'
                   WHEN EXISTS (SELECT 1 FROM events o
                                WHERE o.message_id = c.message_id AND o.event_type = 'clicked'
                                  AND coalesce(o.url, o.link_id) IS DISTINCT FROM coalesce(c.url, c.link_id)
                                  AND o.occurred_at BETWEEN c.occurred_at - interval '1 second'
                                                        AND c.occurred_at + interval '1 second')
                       THEN 'link_burst'
               END AS rule
        FROM events c
        JOIN messages m ON m.message_id = c.message_id AND m.message_id = ANY(ids)
        WHERE c.message_id = ANY(ids) AND c.event_type = 'clicked'
        OFFSET 0  -- each rule once per click
    ) AS ruled
) AS v
WHERE e.id = v.id AND e.occurred_at = v.occurred_at
  AND (e.machine, e.machine_rule) IS DISTINCT FROM (v.machine, v.rule);

UPDATE messages m SET human_clicks = c.n
FROM (
    SELECT message_id, count(*) FILTER (WHERE machine IS FALSE) AS n
    FROM events WHERE message_id = ANY(ids) AND event_type = 'clicked'
    GROUP BY message_id
) AS c
WHERE m.message_id = c.message_id AND m.human_clicks <> c.n;
$fn$;

-- The messages of `ids` (NULL: every message) again from their stored events, then the click
-- rules. The same row the workers keep (tests compare the two): identity columns take the
-- least value seen, milestones the first time, the last bounce the latest (time, reason); texts compare byte by byte (COLLATE "C", as Python
-- compares them).
CREATE FUNCTION messages_rebuild(ids text[]) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    made bigint;
BEGIN
    IF ids IS NULL THEN
        TRUNCATE messages;
        DELETE FROM mailing_totals;
    ELSE
        DELETE FROM messages WHERE message_id = ANY(ids);
    END IF;
    INSERT INTO messages
    SELECT message_id, min(mailing_id), min(recipient COLLATE "C"), min(profile_id),
           min(occurred_at) FILTER (WHERE event_type = 'sent'),
           min(occurred_at) FILTER (WHERE event_type = 'delivered'),
           min(occurred_at) FILTER (WHERE event_type = 'opened'),
           min(occurred_at) FILTER (WHERE event_type = 'clicked'),
           min(occurred_at) FILTER (WHERE event_type IN ('bounced', 'failed')),
           min(occurred_at) FILTER (WHERE event_type = 'unsubscribed'),
           min(occurred_at) FILTER (WHERE event_type = 'complained'),
           max(occurred_at),
           count(*) FILTER (WHERE event_type = 'sent'),
           count(*) FILTER (WHERE event_type = 'delivered'),
           count(*) FILTER (WHERE event_type = 'opened'),
           count(*) FILTER (WHERE event_type = 'clicked'),
           count(*) FILTER (WHERE event_type = 'opened' AND machine IS FALSE),
           count(*) FILTER (WHERE event_type = 'clicked' AND machine IS FALSE),
           count(*) FILTER (WHERE event_type = 'bounced'),
           count(*) FILTER (WHERE event_type = 'failed'),
           count(*) FILTER (WHERE event_type = 'deferred'),
           count(*) FILTER (WHERE event_type = 'autoresponded'),
           count(*) FILTER (WHERE event_type = 'unsubscribed'),
           count(*) FILTER (WHERE event_type = 'complained'),
           (array_agg(occurred_at ORDER BY occurred_at DESC, coalesce(description, smtp_status, '') COLLATE "C" DESC)
                FILTER (WHERE event_type IN ('bounced', 'failed')))[1],
           (array_agg(coalesce(description, smtp_status) ORDER BY occurred_at DESC,
                      coalesce(description, smtp_status, '') COLLATE "C" DESC)
                FILTER (WHERE event_type IN ('bounced', 'failed')))[1]
    FROM events
    WHERE message_id IS NOT NULL
      AND event_type IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'failed', 'deferred', 'autoresponded',
                         'unsubscribed', 'complained')
      AND (ids IS NULL OR message_id = ANY(ids))
    GROUP BY message_id;
    GET DIAGNOSTICS made = ROW_COUNT;
    IF ids IS NULL THEN
        -- events with a mailing id and no message id (unsubscribe webhooks) count for the mailing
        EXECUTE mailing_totals_upsert(
            'SELECT 1 AS s, mailing_id, 0 AS sent, count(*) FILTER (WHERE event_type = ''delivered'') AS delivered,'
            ' 0 AS opens, 0 AS clicks, count(*) FILTER (WHERE event_type = ''bounced'') AS bounces,'
            ' count(*) FILTER (WHERE event_type = ''failed'') AS failures,'
            ' count(*) FILTER (WHERE event_type = ''deferred'') AS deferrals,'
            ' count(*) FILTER (WHERE event_type = ''unsubscribed'') AS unsubscribes,'
            ' count(*) FILTER (WHERE event_type = ''complained'') AS complaints,'
            ' count(*) FILTER (WHERE event_type = ''autoresponded'') AS autoreplies,'
            ' 0 AS human_opens, 0 AS human_clicks, 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens,'
            ' NULL::timestamptz AS sent_at, max(occurred_at) AS last_event_at'
            ' FROM events WHERE message_id IS NULL AND mailing_id IS NOT NULL GROUP BY mailing_id');
        PERFORM messages_apply_click_rules(array(SELECT message_id FROM messages WHERE clicks > 0));
    ELSE
        PERFORM messages_apply_click_rules(ids);
    END IF;
    RETURN made;
END $fn$;

-- Stored opens and clicks: the per-event verdict (workers.events.machine.classify) with Apple's
-- network only; `ingest messages rebuild` adds INGEST_MACHINE_NETWORKS.
UPDATE events SET
    machine_rule = CASE WHEN ip <<= '17.0.0.0/8' AND (user_agent IS NULL OR user_agent = 'Mozilla/5.0')
                        THEN 'apple_proxy' END,
    machine      = CASE WHEN ip <<= '17.0.0.0/8' AND (user_agent IS NULL OR user_agent = 'Mozilla/5.0') THEN true
                        WHEN ip IS NULL AND user_agent IS NULL THEN NULL
                        ELSE false END
WHERE event_type IN ('opened', 'clicked');

SELECT messages_rebuild(NULL);
ANALYZE messages;

-- Same columns as before (0005), then human opens and clicks, the first send and the last event.
CREATE OR REPLACE VIEW mailing_stats AS
SELECT
    mailing_id,
    sum(sent)::bigint                                                   AS sent,
    sum(delivered)::bigint                                              AS delivered,
    sum(opens)::bigint                                                  AS opens,
    sum(unique_opens)::bigint                                           AS unique_opens,
    sum(clicks)::bigint                                                 AS clicks,
    sum(unique_clicks)::bigint                                          AS unique_clicks,
    sum(bounces)::bigint                                                AS bounces,
    sum(failures)::bigint                                               AS failures,
    sum(deferrals)::bigint                                              AS deferrals,
    sum(unsubscribes)::bigint                                           AS unsubscribes,
    sum(complaints)::bigint                                             AS complaints,
    round(sum(unique_opens)::numeric / nullif(sum(delivered), 0), 4)    AS open_rate,
    round(sum(unique_clicks)::numeric / nullif(sum(delivered), 0), 4)   AS click_rate,
    sum(autoreplies)::bigint                                            AS autoreplies,
    sum(human_opens)::bigint                                            AS human_opens,
    sum(unique_human_opens)::bigint                                     AS unique_human_opens,
    sum(human_clicks)::bigint                                           AS human_clicks,
    min(first_sent_at)                                                  AS first_sent_at,
    max(last_event_at)                                                  AS last_event_at
FROM mailing_totals
GROUP BY mailing_id;

-- Who must not be mailed again, one row per address and reason: a hard bounce (a bounce or
-- failure with a permanent SMTP code, 5xx or 5.x.x), a complaint, an unsubscribe. A soft bounce
-- (4xx, 4.x.x, or no code), a deferral or an automatic reply is none. An event without an
-- address takes its message's; one without either (an unsubscribe webhook carries only the
-- profile) is a row of its profile with an empty recipient. `mailing_id`: that of the latest.
CREATE VIEW suppressions AS
SELECT recipient, reason, min(occurred_at) AS first_at, max(occurred_at) AS last_at,
       (array_agg(mailing_id ORDER BY occurred_at DESC) FILTER (WHERE mailing_id IS NOT NULL))[1] AS mailing_id,
       max(profile_id) AS profile_id, count(*) AS events
FROM (
    SELECT lower(coalesce(e.recipient, m.recipient)) AS recipient,
           CASE e.event_type WHEN 'complained' THEN 'complaint' WHEN 'unsubscribed' THEN 'unsubscribe'
                ELSE 'hard_bounce' END AS reason,
           e.occurred_at, coalesce(e.mailing_id, m.mailing_id) AS mailing_id,
           coalesce(e.profile_id, m.profile_id) AS profile_id
    FROM events e
    LEFT JOIN messages m ON m.message_id = e.message_id
    WHERE e.event_type IN ('bounced', 'failed', 'complained', 'unsubscribed')
      AND (e.event_type IN ('complained', 'unsubscribed')
           OR e.smtp_code BETWEEN 500 AND 599 OR e.smtp_status LIKE '5.%')
) AS suppressed
GROUP BY recipient, reason, CASE WHEN recipient IS NULL THEN profile_id END;

-- No documented query reads events by type alone (a few values: an index of little use that
-- every row pays for); `suppressions` reads its few per cent through this one.
DROP INDEX events_event_type_idx;

-- The events `suppressions` reads (a few per cent of all), by time for `--since`.
CREATE INDEX events_suppression_idx ON events (occurred_at)
    WHERE event_type IN ('bounced', 'failed', 'complained', 'unsubscribed');
