-- Events removed from `events` (`ingest erase`) take their share of the mailing totals with
-- them. Those with a message id leave through `messages` (its triggers subtract them); those
-- without one (unsubscribe webhooks: a mailing and a profile) were added to the totals by the
-- workers directly, so they are subtracted here, by the same statement (`mailing_totals_upsert`,
-- s = -1). `ingest prune` drops partitions (no DELETE): retention keeps the totals.
CREATE FUNCTION events_deleted_totals() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE mailing_totals_upsert($src$
SELECT -1 AS s, mailing_id, 0 AS sent, count(*) FILTER (WHERE event_type = 'delivered') AS delivered,
       0 AS opens, 0 AS clicks, count(*) FILTER (WHERE event_type = 'bounced') AS bounces,
       count(*) FILTER (WHERE event_type = 'failed') AS failures,
       count(*) FILTER (WHERE event_type = 'deferred') AS deferrals,
       count(*) FILTER (WHERE event_type = 'unsubscribed') AS unsubscribes,
       count(*) FILTER (WHERE event_type = 'complained') AS complaints,
       count(*) FILTER (WHERE event_type = 'autoresponded') AS autoreplies,
       0 AS human_opens, 0 AS human_clicks, 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens,
       NULL::timestamptz AS sent_at, NULL::timestamptz AS last_event_at
FROM gone
WHERE message_id IS NULL AND mailing_id IS NOT NULL
GROUP BY mailing_id
$src$);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER events_deleted_totals AFTER DELETE ON events
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION events_deleted_totals();
