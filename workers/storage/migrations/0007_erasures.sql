-- Personal data: the people erased (`ingest erase`) and the record of each erasure.
--
-- `erased_selectors`: the keyed hashes (HMAC-SHA256 with INGEST_ERASURE_KEY, see
-- workers.storage.erased) of every erased selector (an e-mail address, lower-cased; a profile
-- id, with its database when given). Workers check each stored row against it, so a later
-- backfill, import or replay stores nothing of an erased person. `key_check` is the key's own
-- fingerprint (an HMAC of a fixed text), so that a worker holding another key refuses to store
-- instead of letting erased people back in. `id` is the list's version: workers reload it only
-- when max(id) changed.
--
-- `erasures`: one row per erased person and run (a repeat too, with zero rows): when, the
-- selector's kind and keyed hash (never the address or id itself), and the rows removed per
-- table.

CREATE TABLE erased_selectors (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    selector_hash  text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('email', 'profile')),
    key_check      text        NOT NULL,
    erased_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT erased_selectors_selector_hash_key UNIQUE (selector_hash)
);

CREATE TABLE erasures (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at      timestamptz NOT NULL DEFAULT now(),
    kind           text        NOT NULL CHECK (kind IN ('email', 'profile')),
    selector_hash  text        NOT NULL,
    removed        jsonb       NOT NULL DEFAULT '{}',  -- table -> rows removed
    total          bigint      NOT NULL DEFAULT 0
);
CREATE INDEX erasures_selector_hash_idx ON erasures (selector_hash);
