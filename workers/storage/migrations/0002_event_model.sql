-- The event model: normalised columns on events, filled for rows stored before this
-- migration from their payload; the indexes of the common queries; the mailing_stats view.
-- Adds nullable columns only: every existing row is kept as it is (event_key included, see
-- workers.model.event_key).

ALTER TABLE events
    ADD COLUMN ip             inet,
    ADD COLUMN user_agent     text,
    ADD COLUMN url            text,
    ADD COLUMN link_id        text,
    ADD COLUMN mailing_id     bigint,
    ADD COLUMN profile_id     bigint,
    ADD COLUMN subprofile_id  bigint,
    ADD COLUMN database_id    bigint,
    ADD COLUMN collection_id  bigint,
    ADD COLUMN template_id    bigint,
    ADD COLUMN tags           text[],
    ADD COLUMN smtp_code      integer,
    ADD COLUMN smtp_status    text,
    ADD COLUMN description    text,
    ADD COLUMN account        text;

-- Helpers for the backfill below, gone at the end of the session.
CREATE FUNCTION pg_temp.try_inet(value text) RETURNS inet LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR length(value) > 100 OR value ~ '[%/]' THEN
        RETURN NULL;
    END IF;
    RETURN host(value::inet)::inet;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

CREATE FUNCTION pg_temp.try_bigint(value text) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR value !~ '^\s*[0-9]{1,19}\s*$' THEN
        RETURN NULL;
    END IF;
    RETURN trim(value)::bigint;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

CREATE FUNCTION pg_temp.scalar(payload jsonb, VARIADIC names text[]) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(btrim(payload ->> n), '')
    FROM unnest(names) WITH ORDINALITY AS u(n, i)
    WHERE jsonb_typeof(payload -> n) IN ('string', 'number')
      AND nullif(btrim(payload ->> n), '') IS NOT NULL
    ORDER BY i
    LIMIT 1
$$;

CREATE FUNCTION pg_temp.tag_list(value jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(array_agg(btrim(t)) FILTER (WHERE btrim(t) <> ''), '{}')
    FROM (
        SELECT unnest(string_to_array(value #>> '{}', ';')) AS t WHERE jsonb_typeof(value) = 'string'
        UNION ALL
        SELECT e #>> '{}' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(value) = 'array' THEN value END) AS e
        WHERE jsonb_typeof(e) IN ('string', 'number')
    ) AS items
$$;

UPDATE events SET
    ip            = pg_temp.try_inet(pg_temp.scalar(payload, 'ip')),
    user_agent    = pg_temp.scalar(payload, 'useragent', 'user_agent', 'header'),
    url           = pg_temp.scalar(payload, 'original', 'url'),
    link_id       = pg_temp.scalar(payload, 'linkinfo', 'link', 'linkid'),
    mailing_id    = pg_temp.try_bigint(pg_temp.scalar(payload, 'mailing', 'mailingid', 'mailing_id')),
    profile_id    = pg_temp.try_bigint(pg_temp.scalar(payload, 'profile', 'profileid', 'profile_id')),
    subprofile_id = pg_temp.try_bigint(pg_temp.scalar(payload, 'subprofile', 'subprofileid', 'subprofile_id')),
    database_id   = pg_temp.try_bigint(pg_temp.scalar(payload, 'database', 'databaseid', 'database_id')),
    collection_id = pg_temp.try_bigint(pg_temp.scalar(payload, 'collection', 'collectionid', 'collection_id')),
    template_id   = pg_temp.try_bigint(pg_temp.scalar(payload, 'template', 'templateid', 'template_id')),
    tags          = pg_temp.tag_list(payload -> 'tags'),
    smtp_code     = CASE WHEN pg_temp.scalar(payload, 'code') ~ '^\s*[1-9][0-9]{2}\s*$'
                         THEN trim(pg_temp.scalar(payload, 'code'))::integer END,
    smtp_status   = coalesce(pg_temp.scalar(payload, 'extended', 'status'),
                             CASE WHEN pg_temp.scalar(payload, 'code') ~ '^\s*[245]\.[0-9]{1,3}\.[0-9]{1,3}\s*$'
                                  THEN btrim(pg_temp.scalar(payload, 'code')) END),
    description   = pg_temp.scalar(payload, 'description'),
    recipient     = coalesce(recipient, left(pg_temp.scalar(payload, 'email', 'rcptto'), 512));

-- The core schema called every failure `failed`; a failure whose state says bounce is a bounce.
-- Its key is rebuilt by the rule of workers.model.event_key (type, message id, second), so a
-- re-delivery after the upgrade is no second row; unless another row already has that key
-- (a `bounce` webhook of the same message and second), in which case the old key stays.
UPDATE events e SET
    event_type = 'bounced',
    event_key  = CASE WHEN e.message_id IS NULL OR EXISTS (SELECT 1 FROM events o WHERE o.event_key = k.new_key)
                      THEN e.event_key ELSE k.new_key END
FROM (
    SELECT id, encode(sha256(convert_to(concat_ws(E'\x1f', 'bounced', message_id,
                                                  floor(extract(epoch FROM occurred_at))::bigint::text), 'UTF8')),
                      'hex') AS new_key
    FROM events
    WHERE event_type = 'failed' AND pg_temp.scalar(payload, 'state') ILIKE '%bounce%'
) AS k
WHERE e.id = k.id;

DROP FUNCTION pg_temp.try_inet(text), pg_temp.try_bigint(text), pg_temp.scalar(jsonb, text[]),
    pg_temp.tag_list(jsonb);

CREATE INDEX events_mailing_type_idx ON events (mailing_id, event_type);
CREATE INDEX events_message_id_idx ON events (message_id);
CREATE INDEX events_recipient_idx ON events (recipient);
-- events_occurred_at_idx exists since 0001.

-- Per mailing: counts of each kind and the rates users ask for first. Only some events carry a
-- mailing id (logfile attempts, newer webhooks); the others take it from the `sent` event of
-- the same message. Unique opens/clicks count distinct messages. Rates: unique / delivered,
-- NULL when nothing was delivered.
CREATE VIEW mailing_stats AS
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
          / nullif(count(*) FILTER (WHERE event_type = 'delivered'), 0), 4) AS click_rate
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
