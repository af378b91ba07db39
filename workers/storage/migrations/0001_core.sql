-- The core schema: one row per event, and the calls that could not be read.

CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_key       text        NOT NULL,
    event_type      text        NOT NULL,
    copernica_type  text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    source          text        NOT NULL CHECK (source IN ('webhook', 'logfile')),
    message_id      text,
    recipient       text,
    payload         jsonb       NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_key_key UNIQUE (event_key)
);
CREATE INDEX events_event_type_idx ON events (event_type);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);

CREATE TABLE rejected_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_key      text        NOT NULL,
    received_at   timestamptz NOT NULL,
    reason        text        NOT NULL,
    content_type  text        NOT NULL DEFAULT '',
    headers       jsonb       NOT NULL DEFAULT '{}',
    body          bytea       NOT NULL,
    source        text        NOT NULL DEFAULT 'webhook',
    remote        text        NOT NULL DEFAULT '',
    method        text        NOT NULL DEFAULT 'POST',
    target        text        NOT NULL DEFAULT '',
    rejected_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rejected_events_call_key_key UNIQUE (call_key)
);
CREATE INDEX rejected_events_received_at_idx ON rejected_events (received_at);
