-- rowembed 0007: schema rowembed is written by its owner only (no role may add
-- an overload there that rowembed's own code would call). What a creator owns
-- for a vectorizer (its queue, change log and generated functions) lives in the
-- vectorizer's home schema instead: its destination's, where the creator may
-- create; named by the vectorizer's id.
ALTER TABLE rowembed.vectorizer ADD COLUMN home name;

DO $move$
DECLARE
    z record;
BEGIN
    FOR z IN
        SELECT v.id, v.queue_table,
               coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = v.destination),
                        (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = v.source),
                        'rowembed') AS home
          FROM rowembed.vectorizer v
    LOOP
        UPDATE rowembed.vectorizer SET home = z.home WHERE id = z.id;
        CONTINUE WHEN z.home = 'rowembed';
        IF to_regclass(format('rowembed.%I', 'queue_' || z.id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE rowembed.%I SET SCHEMA %I', 'queue_' || z.id, z.home);
            EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', z.home, 'queue_' || z.id,
                           'rowembed_queue_' || z.id);
        END IF;
        IF to_regclass(format('rowembed.%I', 'changes_' || z.id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE rowembed.%I SET SCHEMA %I', 'changes_' || z.id, z.home);
            EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', z.home, 'changes_' || z.id,
                           'rowembed_changes_' || z.id);
        END IF;
        -- A full text index's document function (its index refers to it by oid).
        IF to_regprocedure(format('rowembed.%I', '_vz_' || z.id || '_document')) IS NULL
           AND EXISTS (SELECT FROM pg_proc p WHERE p.pronamespace = 'rowembed'::regnamespace
                          AND p.proname = '_vz_' || z.id || '_document') THEN
            EXECUTE (SELECT format('ALTER FUNCTION %s SET SCHEMA %I', p.oid::regprocedure, z.home)
                       FROM pg_proc p WHERE p.pronamespace = 'rowembed'::regnamespace
                        AND p.proname = '_vz_' || z.id || '_document');
            EXECUTE (SELECT format('ALTER FUNCTION %s RENAME TO %I', p.oid::regprocedure,
                                   'rowembed_vz_' || z.id || '_document')
                       FROM pg_proc p WHERE p.pronamespace = z.home::regnamespace
                        AND p.proname = '_vz_' || z.id || '_document');
        END IF;
    END LOOP;
END
$move$;

ALTER TABLE rowembed.vectorizer ALTER COLUMN home SET NOT NULL;

-- The change log's name now depends on the vectorizer's home; a fold takes a bound.
DROP FUNCTION IF EXISTS rowembed._change_log_name(int);
DROP FUNCTION IF EXISTS rowembed._fold_changes(rowembed.vectorizer);
DROP FUNCTION IF EXISTS rowembed.fold_changes_of(int);

-- A creator may write only her own catalog rows (owners_write); the home of
-- one must be its queue's schema, where the creator's objects were made.
CREATE POLICY home_is_the_queues ON rowembed.vectorizer AS RESTRICTIVE FOR ALL
    USING (true)
    WITH CHECK (home = (SELECT n.nspname FROM pg_class AS c
                          JOIN pg_namespace AS n ON n.oid = c.relnamespace
                         WHERE c.oid = queue_table));

-- A row whose `replaces` names a vectorizer that is dropped stands alone: the
-- drop of a vectorizer never fails because another (perhaps another owner's)
-- row points at it.
ALTER TABLE rowembed.vectorizer DROP CONSTRAINT vectorizer_replaces_fkey,
    ADD CONSTRAINT vectorizer_replaces_fkey FOREIGN KEY (replaces)
        REFERENCES rowembed.vectorizer (id) ON DELETE SET NULL;
