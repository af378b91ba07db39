-- Compact payloads name the fields they leave out in fewer bytes (workers.events.compact): the
-- `~` value is `.` and the codes, `#` before a code whose field was a JSON number, instead of
-- two characters a field (a code and its form). An open's payload is 8 bytes smaller. Rows
-- stored before keep theirs: `event_fields` reads both forms. Functions only: no rewrite.
CREATE OR REPLACE FUNCTION event_fields(e events) RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT CASE WHEN jsonb_typeof(e.payload -> '~') = 'string' THEN
    (e.payload - '~') || coalesce((
        SELECT jsonb_object_agg(
            CASE c WHEN 'i' THEN 'id' WHEN 'y' THEN 'type' WHEN 'T' THEN 'time' WHEN 'r' THEN 'recipient' WHEN 'e' THEN 'email' WHEN 'p' THEN 'ip' WHEN 'u' THEN 'useragent' WHEN 'h' THEN 'header' WHEN 'o' THEN 'original' WHEN 'l' THEN 'linkinfo' WHEN 'g' THEN 'tags' WHEN 'M' THEN 'mailing' WHEN 'm' THEN 'mailingid' WHEN 'P' THEN 'profile' WHEN 'q' THEN 'profileid' WHEN 'S' THEN 'subprofile' WHEN 's' THEN 'subprofileid' WHEN 'D' THEN 'database' WHEN 'd' THEN 'databaseid' WHEN 'C' THEN 'collection' WHEN 'c' THEN 'collectionid' WHEN 'E' THEN 'template' WHEN 't' THEN 'templateid' WHEN 'x' THEN 'description' END,
            CASE WHEN form = 'n' THEN to_jsonb((CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END)::numeric) ELSE to_jsonb(CASE c WHEN 'i' THEN e.message_id WHEN 'y' THEN e.copernica_type WHEN 'T' THEN floor(extract(epoch FROM e.occurred_at))::bigint::text WHEN 'r' THEN e.recipient WHEN 'e' THEN e.recipient WHEN 'p' THEN host(e.ip) WHEN 'u' THEN e.user_agent WHEN 'h' THEN e.user_agent WHEN 'o' THEN e.url WHEN 'l' THEN e.link_id WHEN 'g' THEN array_to_string(e.tags, ';') WHEN 'M' THEN e.mailing_id::text WHEN 'm' THEN e.mailing_id::text WHEN 'P' THEN e.profile_id::text WHEN 'q' THEN e.profile_id::text WHEN 'S' THEN e.subprofile_id::text WHEN 's' THEN e.subprofile_id::text WHEN 'D' THEN e.database_id::text WHEN 'd' THEN e.database_id::text WHEN 'C' THEN e.collection_id::text WHEN 'c' THEN e.collection_id::text WHEN 'E' THEN e.template_id::text WHEN 't' THEN e.template_id::text WHEN 'x' THEN e.description END) END)
        FROM (
            -- since 0015: `.`, then the codes, `#` before a number's
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
