-- rowembed 0001: the catalog of vectorizers and the change sequence.
-- Released migrations are never edited; the runner refuses a changed checksum.

CREATE EXTENSION IF NOT EXISTS vector;

-- One counter for every change of every vectorized table. A queue entry carries
-- the value taken when its row last changed; a worker only completes the entry
-- it claimed if the value is still the same (see workers/database.py).
CREATE SEQUENCE rowembed.change_seq AS bigint;

CREATE TABLE rowembed.vectorizer (
    id                int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    source            regclass NOT NULL,
    pk_columns        name[] NOT NULL,
    pk_types          text[] NOT NULL,
    text_columns      name[] NOT NULL,
    separator         text NOT NULL,
    model             text NOT NULL,
    dimensions        int NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    destination       regclass NOT NULL,
    embedding_column  name NOT NULL,
    queue_table       regclass NOT NULL,
    min_similarity    float8 NOT NULL CHECK (min_similarity BETWEEN -1 AND 1),
    query_instruction text NOT NULL,
    rerank_model      text NOT NULL,
    max_attempts      int NOT NULL CHECK (max_attempts >= 1),
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per batch a worker ran: throughput, model calls, truncation, failures.
-- The dispatcher prunes rows older than a day.
CREATE TABLE rowembed.batch_stats (
    vectorizer_id int NOT NULL REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    worker        text NOT NULL,
    claimed       int NOT NULL,
    embedded      int NOT NULL,
    written       int NOT NULL,
    unchanged     int NOT NULL,
    deleted       int NOT NULL,
    superseded    int NOT NULL,
    failed        int NOT NULL,
    truncated     int NOT NULL,
    tokens        bigint NOT NULL,
    padded_tokens bigint NOT NULL,
    seconds       float8 NOT NULL
);
CREATE INDEX ON rowembed.batch_stats (vectorizer_id, finished_at);
CREATE INDEX ON rowembed.batch_stats (finished_at);

-- Backfills: existing rows queued in keyset-ordered chunks by the dispatcher, so
-- no transaction holds the whole table and a crash resumes from last_key.
CREATE TABLE rowembed.backfill (
    vectorizer_id int PRIMARY KEY REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE,
    state         text NOT NULL CHECK (state IN ('running', 'done', 'cancelled')),
    last_key      jsonb,
    scanned       bigint NOT NULL DEFAULT 0,
    queued        bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
