-- rowembed 0010: query texts, cached query vectors and rerank requests belong
-- to a vectorizer (a searcher names a vectorizer, never a model), and only that
-- vectorizer's workers see or answer them. They are caches: emptied here.

TRUNCATE rowembed.query_request, rowembed.query_cache, rowembed.rerank_request;

ALTER TABLE rowembed.query_request
    DROP CONSTRAINT query_request_pkey,
    DROP COLUMN model,
    ADD COLUMN vectorizer_id int NOT NULL REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE,
    ADD PRIMARY KEY (vectorizer_id, text_hash);
ALTER TABLE rowembed.query_cache
    DROP CONSTRAINT query_cache_pkey,
    DROP COLUMN model,
    ADD COLUMN vectorizer_id int NOT NULL REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE,
    ADD PRIMARY KEY (vectorizer_id, text_hash);
ALTER TABLE rowembed.rerank_request
    DROP COLUMN model,
    ADD COLUMN vectorizer_id int NOT NULL REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE;

-- A worker role reaches the requests of the vectorizers it works (it may
-- update their queues); the owner of these tables, which the loopback session
-- of the SQL callers uses, reaches all.
DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['query_request', 'query_cache', 'rerank_request'] LOOP
        EXECUTE format('ALTER TABLE rowembed.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY its_workers ON rowembed.%I USING (EXISTS (
            SELECT FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id
               AND coalesce(has_table_privilege(z.queue_table, 'UPDATE'), false)))$p$, t);
    END LOOP;
END
$policies$;

-- They took a model string; they take a vectorizer now.
DROP FUNCTION IF EXISTS rowembed._query_embedding(text, text, float8);
DROP FUNCTION IF EXISTS rowembed._rerank_scores(text, text, text[], float8);
