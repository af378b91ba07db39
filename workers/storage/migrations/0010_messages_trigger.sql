-- `messages` kept by PostgreSQL: a statement trigger on `events` folds the rows each statement
-- inserted into their messages (and the mailing totals), in the statement's transaction.
--
-- Until now the workers sent each new row's facts a second time (a COPY into a temporary
-- table, then the fold), and the staged path asked for them back (RETURNING). The transition
-- table of an AFTER INSERT statement trigger holds exactly the rows the statement inserted
-- (a row ON CONFLICT DO NOTHING refused is not there), for every path that writes `events`:
-- the worker's COPY, the staged insert, the event-by-event retry of a refused batch, a backfill.
--
-- The fold is written once (`messages_upsert`), for the trigger and for `messages_rebuild`;
-- the totals of events without a message id once (`mailing_direct_totals`), for the trigger,
-- the rebuild and the delete trigger of 0008. Workers older than this migration fold in Python:
-- a worker of this version finding `messages` without the trigger (a database between 0006 and
-- 0010) fails its job, which RQ retries once the migration is done (workers.storage.messages).

-- The statement folding the events of `source` (a relation with the columns of `events`) into
-- `messages`: counts add up, milestones keep the first time, identity columns (mailing,
-- recipient, profile) the least value seen (texts byte by byte, COLLATE "C"). All commutative: any order or split of arrival gives one row.
-- It returns each message's clicks and whether its first click is near its delivery (or its
-- sending), for the click rules (messages_apply_click_rules, 0006).
CREATE FUNCTION messages_upsert(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
INSERT INTO messages AS m (message_id, mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at,
    clicked_at, bounced_at, unsubscribed_at, complained_at, last_event_at, sent, delivered, opens, clicks,
    human_opens, human_clicks, bounces, failures, deferrals, autoreplies, unsubscribes, complaints)
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
       count(*) FILTER (WHERE event_type = 'complained')
FROM %s AS f
WHERE message_id IS NOT NULL
  AND event_type IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'failed', 'deferred', 'autoresponded',
                     'unsubscribed', 'complained')
GROUP BY message_id
ON CONFLICT (message_id) DO UPDATE SET
    mailing_id = least(m.mailing_id, excluded.mailing_id),
    recipient = least(m.recipient COLLATE "C", excluded.recipient COLLATE "C"),
    profile_id = least(m.profile_id, excluded.profile_id),
    sent_at = least(m.sent_at, excluded.sent_at),
    delivered_at = least(m.delivered_at, excluded.delivered_at),
    opened_at = least(m.opened_at, excluded.opened_at),
    clicked_at = least(m.clicked_at, excluded.clicked_at),
    bounced_at = least(m.bounced_at, excluded.bounced_at),
    unsubscribed_at = least(m.unsubscribed_at, excluded.unsubscribed_at),
    complained_at = least(m.complained_at, excluded.complained_at),
    last_event_at = greatest(m.last_event_at, excluded.last_event_at),
    sent = m.sent + excluded.sent,
    delivered = m.delivered + excluded.delivered,
    opens = m.opens + excluded.opens,
    clicks = m.clicks + excluded.clicks,
    human_opens = m.human_opens + excluded.human_opens,
    human_clicks = m.human_clicks + excluded.human_clicks,
    bounces = m.bounces + excluded.bounces,
    failures = m.failures + excluded.failures,
    deferrals = m.deferrals + excluded.deferrals,
    autoreplies = m.autoreplies + excluded.autoreplies,
    unsubscribes = m.unsubscribes + excluded.unsubscribes,
    complaints = m.complaints + excluded.complaints
RETURNING message_id, clicks, clicked_at < coalesce(delivered_at, sent_at) + interval '5 seconds' AS near
$q$, source)
$fn$;

-- The statement keeping, for the messages of `source` (as above) that bounced or failed, the
-- latest bounce by (time, reason; texts byte by byte), in its own statement: in the fold, two
-- ordered aggregates cost every event more than a second update of the few messages that bounce.
CREATE FUNCTION messages_last_bounce(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
UPDATE messages AS m SET last_bounce_at = b.at, last_bounce_reason = b.reason
FROM (SELECT DISTINCT ON (message_id) message_id, occurred_at AS at, coalesce(description, smtp_status) AS reason
      FROM %s AS f
      WHERE message_id IS NOT NULL AND event_type IN ('bounced', 'failed')
      ORDER BY message_id, occurred_at DESC, coalesce(description, smtp_status, '') COLLATE "C" DESC) AS b
WHERE m.message_id = b.message_id
  AND (m.last_bounce_at IS NULL OR b.at > m.last_bounce_at
       OR (b.at = m.last_bounce_at AND coalesce(b.reason, '') COLLATE "C" > coalesce(m.last_bounce_reason, '') COLLATE "C"))
$q$, source)
$fn$;

-- The source of `mailing_totals_upsert` (0006) for the events of `source` without a message id
-- and with a mailing id (unsubscribe webhooks): they count for their mailing directly, added
-- (sign 1) or taken away (sign -1).
CREATE FUNCTION mailing_direct_totals(source text, sign integer) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
SELECT %s AS s, mailing_id, 0 AS sent, count(*) FILTER (WHERE event_type = 'delivered') AS delivered,
       0 AS opens, 0 AS clicks, count(*) FILTER (WHERE event_type = 'bounced') AS bounces,
       count(*) FILTER (WHERE event_type = 'failed') AS failures,
       count(*) FILTER (WHERE event_type = 'deferred') AS deferrals,
       count(*) FILTER (WHERE event_type = 'unsubscribed') AS unsubscribes,
       count(*) FILTER (WHERE event_type = 'complained') AS complaints,
       count(*) FILTER (WHERE event_type = 'autoresponded') AS autoreplies,
       0 AS human_opens, 0 AS human_clicks, 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens,
       NULL::timestamptz AS sent_at, max(occurred_at) AS last_event_at
FROM %s AS f
WHERE message_id IS NULL AND mailing_id IS NOT NULL
GROUP BY mailing_id
$q$, sign, source)
$fn$;

-- The rows a statement inserted into `events`, into `messages` and the mailing totals; then the
-- click rules for the messages whose clicks they may change: a message with a click that got a
-- click, a delivery or a send now, when it has two clicks or more (a burst), its first click is
-- near its delivery or sending, or the delivery or sending came now (the click may no longer be
-- near).
CREATE FUNCTION events_inserted_facts() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    due text[];
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE message_id IS NULL AND mailing_id IS NOT NULL) THEN
        EXECUTE mailing_totals_upsert(mailing_direct_totals('new_rows', 1));
    END IF;
    EXECUTE format($q$
        WITH up AS (%s)
        SELECT array_agg(up.message_id)
        FROM up
        JOIN (SELECT message_id, bool_or(event_type <> 'clicked') AS timed
              FROM new_rows
              WHERE message_id IS NOT NULL AND event_type IN ('clicked', 'delivered', 'sent')
              GROUP BY message_id) AS t USING (message_id)
        WHERE up.clicks > 0 AND (up.clicks > 1 OR up.near OR t.timed)
    $q$, messages_upsert('new_rows')) INTO due;
    IF EXISTS (SELECT 1 FROM new_rows WHERE message_id IS NOT NULL AND event_type IN ('bounced', 'failed')) THEN
        EXECUTE messages_last_bounce('new_rows');
    END IF;
    IF due IS NOT NULL THEN
        PERFORM messages_apply_click_rules(due);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER events_inserted_facts AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_inserted_facts();

-- The rebuild (0006) through the same fold.
CREATE OR REPLACE FUNCTION messages_rebuild(ids text[]) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    made bigint;
BEGIN
    IF ids IS NULL THEN
        TRUNCATE messages;  -- no delete trigger: the totals are emptied with it
        DELETE FROM mailing_totals;
        EXECUTE messages_upsert('events');
        GET DIAGNOSTICS made = ROW_COUNT;
        EXECUTE messages_last_bounce('events');
        EXECUTE mailing_totals_upsert(mailing_direct_totals('events', 1));
        PERFORM messages_apply_click_rules(array(SELECT message_id FROM messages WHERE clicks > 0));
    ELSE
        DELETE FROM messages WHERE message_id = ANY(ids);
        EXECUTE messages_upsert('(SELECT * FROM events WHERE message_id = ANY($1))') USING ids;
        GET DIAGNOSTICS made = ROW_COUNT;
        EXECUTE messages_last_bounce('(SELECT * FROM events WHERE message_id = ANY($1))') USING ids;
        PERFORM messages_apply_click_rules(ids);
    END IF;
    RETURN made;
END
$fn$;

-- The delete trigger (0008) through the same source.
CREATE OR REPLACE FUNCTION events_deleted_totals() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE mailing_totals_upsert(mailing_direct_totals('gone', -1));
    RETURN NULL;
END
$fn$;
