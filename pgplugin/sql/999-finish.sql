-- Runs last: pins search_path on every function, regenerates every vectorizer's triggers.

DO $pin$
DECLARE
    fn regprocedure;
    vector_schema name;
BEGIN
    SELECT n.nspname INTO STRICT vector_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector';
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'rowembed'::regnamespace AND p.proname NOT LIKE '\_vz\_%'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                       fn, vector_schema);
    END LOOP;
END
$pin$;

-- Regenerate every vectorizer's triggers with the functions above.
SELECT rowembed._install_triggers(id) FROM rowembed.vectorizer;
