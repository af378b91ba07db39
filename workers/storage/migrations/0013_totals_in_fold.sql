-- The mailing totals kept by the fold itself, the fold's plans kept by PostgreSQL, and the
-- compact payloads' short codes (at the end).
--
-- Until now statement triggers on `messages` (0006) added each statement's new rows and took
-- away its old ones: every update of a message (each open, each click, each delivery, and the
-- last bounce's own update) copied the row twice more into transition tables and summed both.
-- The fold's statement now adds to `mailing_totals` what it added to `messages`, from its own
-- RETURNING: a count's change is what the batch brought (counts only add up), and whether a
-- message has opened (or clicked, or opened as a person) before this batch is its new count less
-- the batch's. Both hold under concurrent workers: ON CONFLICT updates the newest version of the
-- row, under its lock, and returns it.
--
-- What RETURNING cannot tell is a message whose mailing changed (an event without a mailing
-- came first; the `sent` brings it, or a smaller id): a row trigger, only for those rows, moves
-- the message's totals as they were from the old mailing to the new one; the statement then adds
-- the batch to the new one, as for any message. Deletes keep the statement trigger of 0006
-- (erasures, a rebuild). The click rules change `human_clicks` and add that change themselves.
--
-- The trigger on `events` runs its statements as static SQL made from the same definitions
-- (`messages_fold`, `messages_last_bounce`, `mailing_direct_totals`): PostgreSQL plans them once
-- per connection instead of at each statement (about a millisecond a chunk).

DROP TRIGGER messages_totals_insert ON messages;
DROP TRIGGER messages_totals_update ON messages;

-- The statement folding the events of `source` (a relation with the columns of `events`) into
-- `messages` (counts add up, milestones keep the first time, identity columns the least value
-- seen, texts byte by byte), adding the change to `mailing_totals`, then `result`: a query over
-- `up` (the messages as they now are: message_id, mailing_id, clicks, near: the first click is
-- within 5 s of the delivery, or of the sending) and `f` (what the batch brought, per message:
-- its counts, `sent` and `delivered` among them).
CREATE FUNCTION messages_fold(source text, result text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
WITH f AS (
    SELECT message_id, min(mailing_id) AS mailing_id, min(recipient COLLATE "C") AS recipient,
           min(profile_id) AS profile_id,
           min(occurred_at) FILTER (WHERE event_type = 'sent') AS sent_at,
           min(occurred_at) FILTER (WHERE event_type = 'delivered') AS delivered_at,
           min(occurred_at) FILTER (WHERE event_type = 'opened') AS opened_at,
           min(occurred_at) FILTER (WHERE event_type = 'clicked') AS clicked_at,
           min(occurred_at) FILTER (WHERE event_type IN ('bounced', 'failed')) AS bounced_at,
           min(occurred_at) FILTER (WHERE event_type = 'unsubscribed') AS unsubscribed_at,
           min(occurred_at) FILTER (WHERE event_type = 'complained') AS complained_at,
           max(occurred_at) AS last_event_at,
           count(*) FILTER (WHERE event_type = 'sent') AS sent,
           count(*) FILTER (WHERE event_type = 'delivered') AS delivered,
           count(*) FILTER (WHERE event_type = 'opened') AS opens,
           count(*) FILTER (WHERE event_type = 'clicked') AS clicks,
           count(*) FILTER (WHERE event_type = 'opened' AND machine IS FALSE) AS human_opens,
           count(*) FILTER (WHERE event_type = 'clicked' AND machine IS FALSE) AS human_clicks,
           count(*) FILTER (WHERE event_type = 'bounced') AS bounces,
           count(*) FILTER (WHERE event_type = 'failed') AS failures,
           count(*) FILTER (WHERE event_type = 'deferred') AS deferrals,
           count(*) FILTER (WHERE event_type = 'autoresponded') AS autoreplies,
           count(*) FILTER (WHERE event_type = 'unsubscribed') AS unsubscribes,
           count(*) FILTER (WHERE event_type = 'complained') AS complaints
    FROM %1$s AS e
    WHERE message_id IS NOT NULL
      AND event_type IN ('sent', 'delivered', 'opened', 'clicked', 'bounced', 'failed', 'deferred', 'autoresponded',
                         'unsubscribed', 'complained')
    GROUP BY message_id
), up AS (
    INSERT INTO messages AS m (message_id, mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at,
        clicked_at, bounced_at, unsubscribed_at, complained_at, last_event_at, sent, delivered, opens, clicks,
        human_opens, human_clicks, bounces, failures, deferrals, autoreplies, unsubscribes, complaints)
    SELECT * FROM f
    ON CONFLICT (message_id) DO UPDATE SET %2$s
    RETURNING %3$s
), totals AS (
    %4$s
)
%5$s
$q$, source, sets, returned, mailing_totals_upsert(
    'SELECT 1 AS s, up.mailing_id, f.sent, f.delivered, f.opens, f.clicks, f.bounces, f.failures, f.deferrals,'
    ' f.unsubscribes, f.complaints, f.autoreplies, f.human_opens, f.human_clicks,'
    ' (up.opens > 0)::int - (up.opens - f.opens > 0)::int AS unique_opens,'
    ' (up.clicks > 0)::int - (up.clicks - f.clicks > 0)::int AS unique_clicks,'
    ' (up.human_opens > 0)::int - (up.human_opens - f.human_opens > 0)::int AS unique_human_opens,'
    ' up.sent_at, up.last_event_at'
    ' FROM up JOIN f USING (message_id)'), result)
FROM (SELECT
    'mailing_id = least(m.mailing_id, excluded.mailing_id),'
    ' recipient = least(m.recipient COLLATE "C", excluded.recipient COLLATE "C"),'
    ' profile_id = least(m.profile_id, excluded.profile_id), sent_at = least(m.sent_at, excluded.sent_at),'
    ' delivered_at = least(m.delivered_at, excluded.delivered_at), opened_at = least(m.opened_at, excluded.opened_at),'
    ' clicked_at = least(m.clicked_at, excluded.clicked_at), bounced_at = least(m.bounced_at, excluded.bounced_at),'
    ' unsubscribed_at = least(m.unsubscribed_at, excluded.unsubscribed_at),'
    ' complained_at = least(m.complained_at, excluded.complained_at),'
    ' last_event_at = greatest(m.last_event_at, excluded.last_event_at), sent = m.sent + excluded.sent,'
    ' delivered = m.delivered + excluded.delivered, opens = m.opens + excluded.opens, clicks = m.clicks + excluded.clicks,'
    ' human_opens = m.human_opens + excluded.human_opens, human_clicks = m.human_clicks + excluded.human_clicks,'
    ' bounces = m.bounces + excluded.bounces, failures = m.failures + excluded.failures, deferrals = m.deferrals + excluded.deferrals,'
    ' autoreplies = m.autoreplies + excluded.autoreplies, unsubscribes = m.unsubscribes + excluded.unsubscribes,'
    ' complaints = m.complaints + excluded.complaints' AS sets,
    'm.message_id, m.mailing_id, m.opens, m.clicks, m.human_opens, m.sent_at, m.last_event_at,'
    ' m.clicked_at < coalesce(m.delivered_at, m.sent_at) + interval ''5 seconds'' AS near' AS returned) AS parts
$fn$;

-- A message whose mailing changed: its totals as they were, moved from the old mailing (when it
-- had one) to the new (when it has one). The fold adds the batch to the new one.
CREATE FUNCTION messages_mailing_moved() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE mailing_totals_upsert(
        'SELECT v.s, v.mailing_id, o.sent, o.delivered, o.opens, o.clicks, o.bounces, o.failures, o.deferrals,'
        ' o.unsubscribes, o.complaints, o.autoreplies, o.human_opens, o.human_clicks,'
        ' (o.opens > 0)::int AS unique_opens, (o.clicks > 0)::int AS unique_clicks,'
        ' (o.human_opens > 0)::int AS unique_human_opens, o.sent_at, o.last_event_at'
        ' FROM (VALUES (-1, $1), (1, $2)) AS v(s, mailing_id), (SELECT ($3::messages).*) AS o')
        USING OLD.mailing_id, NEW.mailing_id, OLD;
    RETURN NULL;
END $fn$;

CREATE TRIGGER messages_mailing_moved AFTER UPDATE ON messages
    FOR EACH ROW WHEN (OLD.mailing_id IS DISTINCT FROM NEW.mailing_id) EXECUTE FUNCTION messages_mailing_moved();

-- The click rules (0006): the clicks of the messages of `ids` are read once (a burst is found
-- among them, not by a look-up per click), by a statement whose plan PostgreSQL keeps (planning
-- it took longer than running it for the few messages of a chunk). Only when a verdict changed
-- are those clicks marked again (found by their keys), and only when a message's count of
-- clicks by people changed is `human_clicks` set and the change added to the mailing totals (the
-- messages of `ids` are locked by the caller's transaction: it just folded or rebuilt them, so
-- the count read here is the row's own). Those two are planned at each call: they are rare.
DO $do$
BEGIN
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION messages_apply_click_rules(ids text[]) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $body$
DECLARE
    v_keys uuid[];
    v_at timestamptz[];
    v_verdicts boolean[];
    v_rules text[];
    v_messages text[];
    v_counts bigint[];
    v_was integer[];
BEGIN
    WITH clicks AS MATERIALIZED (
        SELECT c.event_key, c.occurred_at, c.message_id, c.ip, c.user_agent_hash, c.machine, c.machine_rule,
               coalesce(c.url, c.link_id) AS link, coalesce(m.delivered_at, m.sent_at) AS since,
               m.human_clicks AS was
        FROM events c JOIN messages m ON m.message_id = c.message_id
        WHERE c.message_id = ANY(ids) AND m.message_id = ANY(ids) AND c.event_type = 'clicked'
    ), burst AS (
        SELECT DISTINCT k.event_key, k.occurred_at
        FROM clicks k JOIN clicks o ON o.message_id = k.message_id AND o.link IS DISTINCT FROM k.link
                                   AND o.occurred_at BETWEEN k.occurred_at - interval '1 second'
                                                         AND k.occurred_at + interval '1 second'
    ), ruled AS (
        SELECT k.*, CASE
                   WHEN k.machine_rule IN ('apple_proxy', 'operator_network') THEN k.machine_rule
                   WHEN k.occurred_at < k.since + interval '5 seconds' THEN 'click_near_delivery'
                   WHEN b.event_key IS NOT NULL THEN 'link_burst'
               END AS rule
        FROM clicks k LEFT JOIN burst b USING (event_key, occurred_at)
    ), judged AS MATERIALIZED (
        SELECT ruled.*, CASE WHEN rule IS NOT NULL THEN true
                             WHEN ip IS NULL AND user_agent_hash IS NULL THEN NULL ELSE false END AS verdict
        FROM ruled
    ), changed AS (
        SELECT * FROM judged WHERE (machine, machine_rule) IS DISTINCT FROM (verdict, rule)
    ), counted AS (
        SELECT message_id, min(was) AS was, count(*) FILTER (WHERE verdict IS FALSE) AS n
        FROM judged GROUP BY message_id
    )
    SELECT (SELECT array_agg(event_key ORDER BY event_key, occurred_at) FROM changed),
           (SELECT array_agg(occurred_at ORDER BY event_key, occurred_at) FROM changed),
           (SELECT array_agg(verdict ORDER BY event_key, occurred_at) FROM changed),
           (SELECT array_agg(rule ORDER BY event_key, occurred_at) FROM changed),
           (SELECT array_agg(message_id ORDER BY message_id) FROM counted WHERE n <> was),
           (SELECT array_agg(n ORDER BY message_id) FROM counted WHERE n <> was),
           (SELECT array_agg(was ORDER BY message_id) FROM counted WHERE n <> was)
    INTO v_keys, v_at, v_verdicts, v_rules, v_messages, v_counts, v_was;
    IF v_keys IS NOT NULL THEN
        EXECUTE $q$
            UPDATE events e SET machine = u.verdict, machine_rule = u.rule
            FROM unnest($1, $2, $3, $4) AS u(event_key, occurred_at, verdict, rule)
            WHERE e.event_key = u.event_key AND e.occurred_at = u.occurred_at
        $q$ USING v_keys, v_at, v_verdicts, v_rules;
    END IF;
    IF v_messages IS NOT NULL THEN
        EXECUTE %L USING v_messages, v_counts, v_was;
    END IF;
END
$body$
$f$, format($q$
        WITH changed AS (
            UPDATE messages m SET human_clicks = u.n
            FROM unnest($1::text[], $2::bigint[], $3::integer[]) AS u(message_id, n, was)
            WHERE m.message_id = u.message_id
            RETURNING m.mailing_id, u.n - u.was AS human_clicks
        )
        %s
    $q$, mailing_totals_upsert(
        'SELECT 1 AS s, mailing_id, 0 AS sent, 0 AS delivered, 0 AS opens, 0 AS clicks, 0 AS bounces,'
        ' 0 AS failures, 0 AS deferrals, 0 AS unsubscribes, 0 AS complaints, 0 AS autoreplies, 0 AS human_opens,'
        ' human_clicks, 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens,'
        ' NULL::timestamptz AS sent_at, NULL::timestamptz AS last_event_at FROM changed')));
END
$do$;

-- The trigger (0010) with its statements written in: static SQL, planned once per connection.
DO $do$
BEGIN
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION events_inserted_facts() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    v_due text[];
    v_nestloop text := current_setting('enable_nestloop');
    v_hashjoin text := current_setting('enable_hashjoin');
    v_mergejoin text := current_setting('enable_mergejoin');
    v_seqscan text := current_setting('enable_seqscan');
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE message_id IS NULL AND mailing_id IS NOT NULL) THEN
        %s;
    END IF;
    -- Its plan is made once, for the size of the first statement's rows: a nested loop between
    -- the fold's parts, right for one row, would cost a chunk of thousands quadratic time.
    PERFORM set_config('enable_nestloop', 'off', true);
    %s;
    PERFORM set_config('enable_nestloop', v_nestloop, true);
    IF EXISTS (SELECT 1 FROM new_rows WHERE message_id IS NOT NULL AND event_type IN ('bounced', 'failed')) THEN
        -- a join with `messages`: a look-up by its primary key for each message that bounced,
        -- whatever the table's size when the plan was made
        PERFORM set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
                set_config('enable_seqscan', 'off', true);
        %s;
        PERFORM set_config('enable_hashjoin', v_hashjoin, true), set_config('enable_mergejoin', v_mergejoin, true),
                set_config('enable_seqscan', v_seqscan, true);
    END IF;
    IF v_due IS NOT NULL THEN
        PERFORM messages_apply_click_rules(v_due);
    END IF;
    RETURN NULL;
END
$body$
$f$,
        mailing_totals_upsert(mailing_direct_totals('new_rows', 1)),
        -- the click rules for the messages whose clicks this may change: a message with a click
        -- that got a click, a delivery or a send now, when it has two clicks or more (a burst),
        -- its first click is near its delivery or sending, or the delivery or sending came now
        messages_fold('new_rows',
            'SELECT array_agg(up.message_id) INTO v_due FROM up JOIN f USING (message_id)'
            ' WHERE up.clicks > 0 AND f.clicks + f.delivered + f.sent > 0'
            ' AND (up.clicks > 1 OR up.near OR f.delivered + f.sent > 0)'),
        messages_last_bounce('new_rows'));
END
$do$;

-- The rebuild (0010) through the same fold.
CREATE OR REPLACE FUNCTION messages_rebuild(ids text[]) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    made bigint;
BEGIN
    IF ids IS NULL THEN
        TRUNCATE messages;  -- no delete trigger: the totals are emptied with it
        DELETE FROM mailing_totals;
        EXECUTE messages_fold('events', 'SELECT count(*) FROM up') INTO made;
        EXECUTE messages_last_bounce('events');
        EXECUTE mailing_totals_upsert(mailing_direct_totals('events', 1));
        PERFORM messages_apply_click_rules(array(SELECT message_id FROM messages WHERE clicks > 0));
    ELSE
        DELETE FROM messages WHERE message_id = ANY(ids);
        EXECUTE messages_fold('(SELECT * FROM events WHERE message_id = ANY($1))', 'SELECT count(*) FROM up')
            INTO made USING ids;
        EXECUTE messages_last_bounce('(SELECT * FROM events WHERE message_id = ANY($1))') USING ids;
        PERFORM messages_apply_click_rules(ids);
    END IF;
    RETURN made;
END
$fn$;

DROP FUNCTION messages_upsert(text);

-- Compact payloads name the fields they leave out in fewer bytes (workers.events.compact): the
-- `~` value is `.` and the codes, `#` before a code whose field was a JSON number, instead of
-- two characters a field (a code and its form). An open's payload is 8 bytes smaller. Rows
-- stored before keep theirs: `event_fields` reads both forms.
CREATE OR REPLACE FUNCTION event_fields(e events) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT CASE WHEN jsonb_typeof(e.payload -> '~') = 'string' THEN
    (e.payload - '~') || coalesce((
        SELECT jsonb_object_agg(
            CASE c WHEN 'i' THEN 'id' WHEN 'y' THEN 'type' WHEN 'T' THEN 'time' WHEN 'r' THEN 'recipient' WHEN 'e' THEN 'email' WHEN 'p' THEN 'ip' WHEN 'u' THEN 'useragent' WHEN 'h' THEN 'header' WHEN 'o' THEN 'original' WHEN 'l' THEN 'linkinfo' WHEN 'g' THEN 'tags' WHEN 'M' THEN 'mailing' WHEN 'm' THEN 'mailingid' WHEN 'P' THEN 'profile' WHEN 'q' THEN 'profileid' WHEN 'S' THEN 'subprofile' WHEN 's' THEN 'subprofileid' WHEN 'D' THEN 'database' WHEN 'd' THEN 'databaseid' WHEN 'C' THEN 'collection' WHEN 'c' THEN 'collectionid' WHEN 'E' THEN 'template' WHEN 't' THEN 'templateid' WHEN 'x' THEN 'description' END,
            CASE WHEN form = 'n' THEN to_jsonb((CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END)::numeric) ELSE to_jsonb(CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END) END)
        FROM (
            -- from this migration on: `.`, then the codes, `#` before a number's
            SELECT m[2] AS c, CASE m[1] WHEN '#' THEN 'n' ELSE 's' END AS form
            FROM regexp_matches(substr(e.payload ->> '~', 2), '(#?)([^#])', 'g') AS m
            WHERE left(e.payload ->> '~', 1) = '.'
            UNION ALL
            -- before: a code and its form, two characters a field
            SELECT substr(e.payload ->> '~', i, 1), substr(e.payload ->> '~', i + 1, 1)
            FROM generate_series(1, length(e.payload ->> '~'), 2) AS i
            WHERE left(e.payload ->> '~', 1) <> '.'
        ) AS codes
    ), '{}'::jsonb)
ELSE e.payload END
$fn$;
