-- DDL on a vectorizer's tables that would break the application's writes or
-- lose changes, caught as it happens (event triggers: migrate creates them when
-- it runs as a superuser; without them, status() still shows the problem).

-- Vectorized tables whose changes would not all reach their triggers: a
-- partition (rows written through the parent), a parent or a child by
-- inheritance (rows of the child), among those in `touched` or linked to them.
CREATE OR REPLACE FUNCTION rowembed._entangled_sources(touched oid[])
RETURNS TABLE (name text, source regclass)
LANGUAGE sql STABLE AS $$
    SELECT z.name, z.source FROM rowembed.vectorizer AS z JOIN pg_class AS c ON c.oid = z.source
     WHERE (c.relispartition OR EXISTS (SELECT FROM pg_inherits AS i
                                         WHERE z.source IN (i.inhrelid, i.inhparent)))
       AND (z.source = ANY (touched)
            OR EXISTS (SELECT FROM pg_inherits AS i
                        WHERE (i.inhrelid = z.source AND i.inhparent = ANY (touched))
                           OR (i.inhparent = z.source AND i.inhrelid = ANY (touched))))
$$;

-- ddl_command_end of CREATE TABLE and ALTER TABLE: refuses ATTACH PARTITION,
-- INHERIT, CREATE TABLE ... INHERITS or PARTITION OF that involve a vectorized
-- table. SECURITY DEFINER: any role's DDL fires it, and it must read the whole
-- catalog; its statements are static.
CREATE OR REPLACE FUNCTION rowembed._refuse_entangling() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    found_name text;
    found_source regclass;
BEGIN
    BEGIN
        SELECT e.name, e.source INTO found_name, found_source
          FROM rowembed._entangled_sources(
                   ARRAY(SELECT d.objid FROM pg_event_trigger_ddl_commands() AS d
                          WHERE d.classid = 'pg_class'::regclass)) AS e
         LIMIT 1;
    EXCEPTION WHEN OTHERS THEN  -- never fail unrelated DDL because of rowembed
        RAISE WARNING 'rowembed: could not check this DDL against the vectorizers: %', SQLERRM;
        RETURN;
    END;
    IF found_name IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: % is vectorized (%): rows written through a parent table or'
                        ' kept in a child table would not be captured', found_source, found_name
            USING HINT = 'Drop the vectorizer first, or vectorize a table outside the hierarchy.';
    END IF;
END
$body$;

-- sql_drop: when a vectorizer's queue, change log or destination is dropped by hand, its
-- triggers go too, so the source's writes keep succeeding; status() says what
-- was dropped, and the vectorizer is dropped or recreated from there.
CREATE OR REPLACE FUNCTION rowembed._disarm_on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer;
    event text;
BEGIN
    FOR v IN SELECT z.* FROM rowembed.vectorizer AS z
              WHERE EXISTS (SELECT FROM pg_event_trigger_dropped_objects() AS d
                             WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
                               AND (d.objid IN (z.queue_table, z.destination)
                                    OR d.object_identity = rowembed._change_log_name(z))) LOOP
        CONTINUE WHEN rowembed._qualified(v.source) IS NULL;
        FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                           'rowembed_' || v.id || '_' || event, v.source);
        END LOOP;
    END LOOP;
EXCEPTION WHEN OTHERS THEN  -- never fail the DROP itself
    RAISE WARNING 'rowembed: the triggers of a vectorizer whose table was dropped remain: %',
        SQLERRM;
END
$body$;

DO $guard$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE NOTICE 'rowembed: migrate ran without superuser: no DDL guard (event triggers);'
                     ' status() still shows a dropped table or a partitioned source';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'rowembed_refuse_entangling') THEN
        CREATE EVENT TRIGGER rowembed_refuse_entangling ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
            EXECUTE FUNCTION rowembed._refuse_entangling();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'rowembed_disarm_on_drop') THEN
        CREATE EVENT TRIGGER rowembed_disarm_on_drop ON sql_drop
            EXECUTE FUNCTION rowembed._disarm_on_drop();
    END IF;
END
$guard$;
