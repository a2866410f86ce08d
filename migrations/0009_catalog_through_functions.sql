-- rowembed 0009: the catalog changes only through rowembed's functions
-- (sql/052-catalog.sql), which validate what they write. Each vectorizer
-- records its owner; key types are types, not text; a role sees only the
-- vectorizers it may use.

ALTER TABLE rowembed.vectorizer ADD COLUMN owner regrole;
UPDATE rowembed.vectorizer AS z
   SET owner = coalesce((SELECT c.relowner FROM pg_class AS c WHERE c.oid = z.queue_table),
                        (SELECT c.relowner FROM pg_class AS c WHERE c.oid = z.source),
                        (SELECT c.relowner FROM pg_class AS c WHERE c.oid = z.destination),
                        (SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'rowembed'));
ALTER TABLE rowembed.vectorizer ALTER COLUMN owner SET NOT NULL;

ALTER TABLE rowembed.vectorizer ALTER COLUMN pk_types TYPE regtype[] USING pk_types::regtype[];

-- A worker embeds a row's chunks in one batch: bounded here as in create_vectorizer.
UPDATE rowembed.vectorizer SET max_chunks = 1000 WHERE max_chunks > 1000;
ALTER TABLE rowembed.vectorizer ADD CONSTRAINT vectorizer_max_chunks_bound CHECK (max_chunks <= 1000);

-- No role writes the catalog directly any more (999-finish revokes what grant
-- functions once gave): the write policies go; reads are limited to the
-- vectorizers a role owns, works or searches.
DROP POLICY everyone_reads ON rowembed.vectorizer;
DROP POLICY owners_write ON rowembed.vectorizer;
DROP POLICY home_is_the_queues ON rowembed.vectorizer;
CREATE POLICY usable ON rowembed.vectorizer FOR SELECT USING (
    pg_has_role(owner, 'USAGE')
    OR coalesce(has_table_privilege(queue_table, 'SELECT'), false)
    OR coalesce(has_table_privilege(destination, 'SELECT'), false));

ALTER TABLE rowembed.backfill ENABLE ROW LEVEL SECURITY;
CREATE POLICY usable ON rowembed.backfill FOR SELECT USING (
    EXISTS (SELECT FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id));
ALTER TABLE rowembed.batch_stats ENABLE ROW LEVEL SECURITY;
CREATE POLICY usable ON rowembed.batch_stats FOR SELECT USING (
    EXISTS (SELECT FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id));
