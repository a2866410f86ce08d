-- rowembed 0003: model families in the catalog, a passage instruction per
-- vectorizer, a catalog no role can forge, and the drops of function forms that
-- the idempotent files (pgplugin/sql/) no longer create. Released migrations are
-- never edited.

-- What rowembed knows of a family of models (dimensions, instructions, pooling,
-- a starting threshold, limits): create_vectorizer's defaults. `rowembed migrate`
-- rewrites the rows from rowembed/families.py, the one place they are written.
CREATE TABLE rowembed.model_family (
    name                text PRIMARY KEY,
    pattern             text NOT NULL,  -- case-insensitive regex on the model's name
    rank                int NOT NULL UNIQUE,  -- the first family that matches wins
    dimensions          jsonb NOT NULL DEFAULT '{}',  -- {"bge-base-en-v1.5": 768, ...}
    query_instruction   text NOT NULL DEFAULT '',
    passage_instruction text NOT NULL DEFAULT '',
    pooling             text,
    min_similarity      float8 NOT NULL CHECK (min_similarity BETWEEN -1 AND 1),
    padding_side        text NOT NULL DEFAULT 'right' CHECK (padding_side IN ('right', 'left')),
    max_tokens          int
);

-- Prefixed to each row's text before it is embedded (e5: 'passage: '); part of
-- the embedded text, so of its hash: a change re-embeds on the next backfill.
ALTER TABLE rowembed.vectorizer ADD COLUMN passage_instruction text NOT NULL DEFAULT '';

-- 0002 and 0003 added options to create_vectorizer: the older signatures go.
DROP FUNCTION IF EXISTS rowembed.create_vectorizer(
    regclass, name[], text, text, int, text, name, text, float8, text, text, int, boolean);
DROP FUNCTION IF EXISTS rowembed.create_vectorizer(
    regclass, name[], text, text, int, text, name, text, float8, text, text, int, boolean,
    text, text, bigint);

-- 0002 added the `changes` column to vectorizers_with_work(); 0002 and 0003
-- added columns to status().
DO $drop$
BEGIN
    IF EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('rowembed.vectorizers_with_work()')
               AND prorettype = 'int4'::regtype) THEN
        DROP FUNCTION rowembed.vectorizers_with_work();
    END IF;
    IF EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('rowembed.status()')
               AND NOT 'problem' = ANY (proargnames)) THEN
        DROP VIEW IF EXISTS rowembed.vectorizer_status;
        DROP FUNCTION rowembed.status();
    END IF;
END
$drop$;

-- A role may write only catalog rows whose source, destination and queue it owns
-- (or is a member of their owner): with INSERT on the catalog it cannot describe
-- another role's tables, which `migrate` would then build trigger functions over.
-- The catalog's owner (the role that runs migrate) and superusers are exempt.
ALTER TABLE rowembed.vectorizer ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON rowembed.vectorizer FOR SELECT USING (true);
CREATE POLICY owners_write ON rowembed.vectorizer FOR ALL
    USING (NOT EXISTS (
        SELECT FROM pg_class AS c WHERE c.oid IN (source, destination, queue_table)
           AND NOT pg_has_role(current_user, c.relowner, 'USAGE')))
    WITH CHECK ((
        SELECT count(*) FROM pg_class AS c WHERE c.oid IN (source, destination, queue_table)
           AND pg_has_role(current_user, c.relowner, 'USAGE')) = 3);
