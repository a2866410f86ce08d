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

-- Regenerate every vectorizer's triggers with the functions above. One that
-- cannot be (its source altered) keeps its triggers and is shown by status().
DO $install$
DECLARE
    vectorizer_id int;
BEGIN
    FOR vectorizer_id IN SELECT z.id FROM rowembed.vectorizer AS z ORDER BY z.id LOOP
        BEGIN
            PERFORM rowembed._install_triggers(vectorizer_id);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'rowembed: the triggers of vectorizer % were not regenerated: %',
                vectorizer_id, SQLERRM;
        END;
    END LOOP;
END
$install$;
