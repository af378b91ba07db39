-- Unsubscribes meet across webhook and logfile; automatic replies are no bounces.
--
-- 1. An unsubscribe keys on its profile and second (workers.model.event_key): the webhook's `id`
--    is the unsubscribe's own, the logfile's the message's. Stored `unsubscribed` rows with a
--    profile id get the key by that rule, here in SQL (tests compare the two), so a re-delivery
--    after the upgrade is no new row. Where two stored rows are the same unsubscribe (its
--    webhook and its logfile record, stored under their old keys) the first stored takes the
--    new key and the other keeps its own: both rows stay, nothing is merged or dropped. Rows
--    without a profile id keep their key (the rule falls back to the id for them).
-- 2. A webhook unsubscribe's `id` is no message id: its `message_id` is cleared (the payload
--    keeps it).
-- 3. `autoresponded` (a bounce webhook carrying an out-of-office or other automatic reply) joins
--    the vocabulary: `event_type` has no CHECK, so only mailing_stats changes: an `autoreplies`
--    column (last, so CREATE OR REPLACE keeps the view, its grants and views built on it).
--    Rows stored as `bounced` before this are not re-read: they stay `bounced`.

UPDATE events e SET event_key = k.new_key
FROM (
    SELECT id, occurred_at, new_key, row_number() OVER (PARTITION BY new_key ORDER BY id) AS nth
    FROM (
        SELECT id, occurred_at,
               encode(sha256(convert_to(concat_ws(E'\x1f', 'unsubscribed', 'profile', profile_id::text,
                                                  floor(extract(epoch FROM occurred_at))::bigint::text), 'UTF8')),
                      'hex') AS new_key
        FROM events
        WHERE event_type = 'unsubscribed' AND profile_id IS NOT NULL
    ) AS rekeyed
) AS k
WHERE e.id = k.id AND e.occurred_at = k.occurred_at AND k.nth = 1 AND e.event_key <> k.new_key
  AND NOT EXISTS (SELECT 1 FROM events o WHERE o.event_key = k.new_key);

UPDATE events SET message_id = NULL
WHERE event_type = 'unsubscribed' AND source = 'webhook' AND message_id IS NOT NULL;

CREATE OR REPLACE VIEW mailing_stats AS
SELECT
    mailing_id,
    count(*) FILTER (WHERE event_type = 'sent')                          AS sent,
    count(*) FILTER (WHERE event_type = 'delivered')                     AS delivered,
    count(*) FILTER (WHERE event_type = 'opened')                        AS opens,
    count(DISTINCT message_id) FILTER (WHERE event_type = 'opened')      AS unique_opens,
    count(*) FILTER (WHERE event_type = 'clicked')                       AS clicks,
    count(DISTINCT message_id) FILTER (WHERE event_type = 'clicked')     AS unique_clicks,
    count(*) FILTER (WHERE event_type = 'bounced')                       AS bounces,
    count(*) FILTER (WHERE event_type = 'failed')                        AS failures,
    count(*) FILTER (WHERE event_type = 'deferred')                      AS deferrals,
    count(*) FILTER (WHERE event_type = 'unsubscribed')                  AS unsubscribes,
    count(*) FILTER (WHERE event_type = 'complained')                    AS complaints,
    round(count(DISTINCT message_id) FILTER (WHERE event_type = 'opened')::numeric
          / nullif(count(*) FILTER (WHERE event_type = 'delivered'), 0), 4) AS open_rate,
    round(count(DISTINCT message_id) FILTER (WHERE event_type = 'clicked')::numeric
          / nullif(count(*) FILTER (WHERE event_type = 'delivered'), 0), 4) AS click_rate,
    count(*) FILTER (WHERE event_type = 'autoresponded')                 AS autoreplies
FROM (
    SELECT e.id, e.mailing_id, e.event_type, e.message_id
    FROM events e
    WHERE e.mailing_id IS NOT NULL
    UNION ALL
    -- An event without a mailing id, attributed through the `sent` event of its message
    -- (DISTINCT: two stored `sent` rows of one message do not count it twice).
    SELECT DISTINCT e.id, s.mailing_id, e.event_type, e.message_id
    FROM events s
    JOIN events e ON e.message_id = s.message_id
    WHERE s.event_type = 'sent' AND s.mailing_id IS NOT NULL AND e.mailing_id IS NULL
) AS attributed
GROUP BY mailing_id;
