-- rowembed 0004: query embeddings and rerank scores for SQL callers
-- (rowembed.search_text, embed_query, rerank): the requests the workers answer
-- and where they answer. All UNLOGGED: a crash empties them, which costs a
-- recomputation and loses nothing.

-- Texts waiting for a worker, one per (model, text). Written only through
-- rowembed.query_embedding() (over a loopback dblink session, so that the request
-- is visible to the workers before the caller's transaction ends).
CREATE UNLOGGED TABLE rowembed.query_request (
    model        text NOT NULL,
    text_hash    bytea NOT NULL,  -- rowembed._text_hash(text)
    text         text NOT NULL,   -- the query instruction and the query
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash)
);

-- Query vectors by model and text; `error` when the worker could not embed it
-- (the caller reports it and removes the row). Bounded by the workers (oldest
-- first, ROWEMBED_QUERY_CACHE_ROWS).
CREATE UNLOGGED TABLE rowembed.query_cache (
    model      text NOT NULL,
    text_hash  bytea NOT NULL,
    embedding  real[],
    error      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash),
    CHECK ((embedding IS NULL) <> (error IS NULL))
);
CREATE INDEX ON rowembed.query_cache (created_at);

-- Rerank requests: (query, passages) pairs scored by `model`, a vectorizer's
-- rerank model; the worker fills `scores` (in the passages' order) or `error`,
-- and the caller removes the row when it has read it.
CREATE UNLOGGED TABLE rowembed.rerank_request (
    id           uuid PRIMARY KEY,
    model        text NOT NULL,
    query        text NOT NULL,
    passages     text[] NOT NULL,
    scores       real[],
    error        text,
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- dblink gives the loopback session; where it cannot be created here (not
-- installed, or no privilege) search_text() says so and everything else works.
DO $dblink$
BEGIN
    CREATE EXTENSION IF NOT EXISTS dblink;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'rowembed: dblink is not available (%); search_text() needs it', SQLERRM;
END
$dblink$;

-- The loopback session's connection string, where the default (this server's
-- socket, as the owner of rowembed's functions) does not authenticate: dblink
-- requires a password of a role that is not a superuser. One row; no role but
-- its owner reads it (rowembed.set_query_connection writes it).
CREATE TABLE rowembed.query_connection (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    conninfo text NOT NULL
);

-- The text search configuration of a vectorizer's full text index (NULL: none;
-- rowembed.enable_text_search sets it), for hybrid_search().
ALTER TABLE rowembed.vectorizer ADD COLUMN text_search regconfig;
