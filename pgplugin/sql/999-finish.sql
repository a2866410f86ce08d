-- Runs last: pins search_path on every function, regenerates every vectorizer's
-- triggers, and keeps schema rowembed written by its owner only.

DO $pin$
DECLARE
    fn regprocedure;
BEGIN
    -- Every function sees pg_catalog only, and names the rest schema-qualified
    -- (pgvector's types, operators and functions as @extschema:vector@, which
    -- migrate fills in): a role that may create in the vector extension's schema
    -- (public, on PostgreSQL 14 and older, or by grant) could otherwise plant an
    -- overload that a worker or dispatcher running as a superuser would call.
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'rowembed'::regnamespace AND p.proname NOT LIKE '\_vz\_%'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', fn);
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

-- Trigger functions of releases before 0007 lived in schema rowembed; the
-- triggers now use those in each vectorizer's home. One still in use (its
-- vectorizer's triggers could not be regenerated) stays until they can be.
DO $cleanup$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'rowembed'::regnamespace AND p.proname LIKE '\_vz\_%' LOOP
        BEGIN
            EXECUTE format('DROP FUNCTION %s', fn);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;
        END;
    END LOOP;
END
$cleanup$;

-- No role but the owner creates in schema rowembed (grant_creator once granted it):
-- one that could would add overloads that rowembed's own functions call.
DO $owner_only$
DECLARE
    grantee oid;
BEGIN
    FOR grantee IN SELECT a.grantee FROM pg_namespace n, aclexplode(n.nspacl) AS a
                    WHERE n.nspname = 'rowembed' AND a.privilege_type = 'CREATE'
                      AND a.grantee <> n.nspowner LOOP
        EXECUTE format('REVOKE CREATE ON SCHEMA rowembed FROM %s',
                       CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE quote_ident(grantee::regrole::text) END);
    END LOOP;
END
$owner_only$;

-- The catalog is written by rowembed's functions only (048-catalog.sql). A role
-- that held INSERT on it (a creator, by grant_creator before 0009) or UPDATE on
-- backfill (a worker) gets EXECUTE on the writers it needs instead; then no
-- role but the owner keeps INSERT, UPDATE, DELETE or TRUNCATE on a catalog table.
DO $catalog$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT DISTINCT a.grantee::regrole::text AS role, c.relname = 'vectorizer' AS creator
               FROM pg_class AS c, aclexplode(c.relacl) AS a
              WHERE c.oid IN ('rowembed.vectorizer'::regclass, 'rowembed.backfill'::regclass)
                AND a.privilege_type IN ('INSERT', 'UPDATE') AND a.grantee NOT IN (0, c.relowner)
    LOOP
        PERFORM rowembed._grant_catalog_writers(g.role, g.creator);
    END LOOP;
    FOR g IN SELECT c.oid::regclass AS tab, a.privilege_type AS privilege,
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                         ELSE quote_ident(a.grantee::regrole::text) END AS grantee
               FROM pg_class AS c, aclexplode(c.relacl) AS a
              WHERE c.oid IN ('rowembed.vectorizer'::regclass, 'rowembed.backfill'::regclass,
                              'rowembed.batch_stats'::regclass, 'rowembed.model_family'::regclass,
                              'rowembed.query_connection'::regclass)
                AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
                AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE %s ON %s FROM %s', g.privilege, g.tab, g.grantee);
    END LOOP;
END
$catalog$;

-- Who may search a vectorizer (its owner, a role reading its embeddings) may
-- ask the workers for query vectors and rerank scores: given again after 0010
-- replaced those functions (the functions check the vectorizer themselves).
DO $searchers$
DECLARE
    role text;
BEGIN
    FOR role IN SELECT DISTINCT r.rolname FROM rowembed.vectorizer AS z
                  JOIN pg_class AS c ON c.oid = z.destination
                 CROSS JOIN LATERAL (SELECT z.owner::oid UNION
                                     SELECT a.grantee FROM aclexplode(c.relacl) AS a
                                      WHERE a.privilege_type = 'SELECT') AS g(grantee)
                  JOIN pg_roles AS r ON r.oid = g.grantee LOOP
        PERFORM rowembed._grant_query_functions(role);
    END LOOP;
END
$searchers$;
