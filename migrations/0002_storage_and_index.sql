-- rowembed 0002: storage and index choices per vectorizer, and deferred index
-- builds for bulk loads. Released migrations are never edited.

ALTER TABLE rowembed.vectorizer
    -- Column type of the embeddings: vector (float4) or halfvec (float2, half the size).
    ADD COLUMN storage text NOT NULL DEFAULT 'vector'
        CHECK (storage IN ('vector', 'halfvec')),
    -- hnsw: HNSW over the embeddings (cosine); hnsw_binary: HNSW over their binary
    -- quantization (hamming), candidates re-scored exactly; none: exact scans only.
    ADD COLUMN index_method text NOT NULL DEFAULT 'hnsw'
        CHECK (index_method IN ('hnsw', 'hnsw_binary', 'none')),
    -- A backfill of more rows than this drops the index and builds it once the
    -- backlog has drained (NULL: always keep the index live).
    ADD COLUMN defer_index_above bigint DEFAULT 100000
        CHECK (defer_index_above >= 0),
    -- built: the index exists (or index_method is none); deferred: waiting for
    -- the backlog to drain, then the dispatcher (or `rowembed index`) builds it.
    ADD COLUMN index_state text NOT NULL DEFAULT 'built'
        CHECK (index_state IN ('built', 'deferred')),
    -- Why the last build of a deferred index failed (shown by status()).
    ADD COLUMN index_error text;
