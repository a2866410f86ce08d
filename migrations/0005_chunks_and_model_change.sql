-- rowembed 0005: long rows in chunks, and a vectorizer rebuilt beside the one it
-- replaces (a model change without downtime). Released migrations are never edited.

-- chunking 'tokens': a row is embedded as chunks of at most chunk_tokens tokens
-- (NULL: the model's limit) sharing chunk_overlap tokens (NULL: an eighth of a
-- chunk), at most max_chunks per row; the destination holds one row per chunk.
ALTER TABLE rowembed.vectorizer
    ADD COLUMN chunking text NOT NULL DEFAULT 'none' CHECK (chunking IN ('none', 'tokens')),
    ADD COLUMN chunk_tokens int CHECK (chunk_tokens >= 8),
    ADD COLUMN chunk_overlap int CHECK (chunk_overlap >= 0),
    ADD COLUMN max_chunks int NOT NULL DEFAULT 100 CHECK (max_chunks >= 1),
    -- A vectorizer being built to replace another (alter_vectorizer): searches
    -- use the other until this one is complete, then the two switch.
    ADD COLUMN replaces int UNIQUE REFERENCES rowembed.vectorizer (id),
    ADD COLUMN keep_replaced boolean NOT NULL DEFAULT false;

-- The search functions return the best chunk of each row; status() counts
-- chunks and shows replacements; create_vectorizer takes the chunking options.
DROP FUNCTION IF EXISTS rowembed.search(anyelement, vector, int, float8, text, jsonb);
DROP FUNCTION IF EXISTS rowembed.similar(anyelement, int, float8, text, jsonb);
DROP FUNCTION IF EXISTS rowembed.search_text(
    anyelement, text, int, float8, text, jsonb, float8, boolean, int);
DROP FUNCTION IF EXISTS rowembed.hybrid_search(
    anyelement, text, int, text, jsonb, float8, int, float8, float8, float8, float8);
DROP VIEW IF EXISTS rowembed.vectorizer_status;
DROP FUNCTION IF EXISTS rowembed.status();
DROP FUNCTION IF EXISTS rowembed.create_vectorizer(
    regclass, name[], text, text, int, text, name, text, float8, text, text, int, boolean,
    text, text, bigint, text);
