-- The only writers of rowembed's catalog (vectorizer, backfill, batch_stats):
-- no role but rowembed's owner holds INSERT, UPDATE or DELETE on it, so every
-- value there was checked by one of these functions. They run as the owner
-- (SECURITY DEFINER) and act for the session's login role: inside them
-- current_user is the owner, and a session can act only as roles its login
-- role is a member of.

-- Whether the session may manage what `owner` owns.
CREATE OR REPLACE FUNCTION rowembed._session_is(owner regrole) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.pg_has_role(session_user, owner, 'MEMBER')
$$;

-- The vectorizer `vectorizer_id`, locked, if the session manages it.
CREATE OR REPLACE FUNCTION rowembed._managed(vectorizer_id int) RETURNS rowembed.vectorizer
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id FOR UPDATE;
    IF NOT FOUND OR NOT rowembed._session_is(v.owner) THEN
        RAISE EXCEPTION 'rowembed: vectorizer % is not one of %''s', vectorizer_id, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v;
END
$body$;

-- Records a new vectorizer (create_vectorizer builds its tables first). Its
-- owner, home, key types and key columns are read from its tables here, never
-- taken from the caller; its id is the one the session last drew.
CREATE OR REPLACE FUNCTION rowembed._catalog_insert(fields jsonb) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer := pg_catalog.jsonb_populate_record(NULL::rowembed.vectorizer, fields);
    bad text;
BEGIN
    IF v.id IS DISTINCT FROM pg_catalog.currval('rowembed.vectorizer_id_seq'::regclass) THEN
        RAISE EXCEPTION 'rowembed: a vectorizer''s id is the last this session drew';
    END IF;
    SELECT pg_catalog.format('%s', r.rel) INTO bad
      FROM pg_catalog.unnest(ARRAY[v.source, v.destination, v.queue_table]) AS r(rel)
      LEFT JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
     WHERE c.oid IS NULL OR c.relkind <> 'r' OR NOT rowembed._session_is(c.relowner::regrole)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rowembed: % is not a table of %', coalesce(bad, 'NULL'), session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.relowner, n.nspname INTO v.owner, v.home
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = v.queue_table;
    IF v.pk_columns IS DISTINCT FROM (
        SELECT pg_catalog.array_agg(a.attname ORDER BY k.ord)
          FROM pg_catalog.pg_index AS i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = v.source AND i.indisprimary) THEN
        RAISE EXCEPTION 'rowembed: the key columns are those of the primary key of %', v.source;
    END IF;
    v.pk_types := (SELECT pg_catalog.array_agg(a.atttypid::regtype ORDER BY u.o)
                     FROM pg_catalog.unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)
                     JOIN pg_catalog.pg_attribute AS a ON a.attrelid = v.source AND a.attname = u.c);
    SELECT u.c INTO bad FROM pg_catalog.unnest(v.text_columns) AS u(c)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = v.source
                          AND a.attname = u.c AND a.attnum > 0 AND NOT a.attisdropped)
     LIMIT 1;
    IF FOUND OR v.text_columns IS NULL OR pg_catalog.cardinality(v.text_columns) = 0 THEN
        RAISE EXCEPTION 'rowembed: % has no column %', v.source, coalesce(bad, 'NULL');
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = v.destination
                      AND a.attname = v.embedding_column AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'rowembed: % has no column %', v.destination, v.embedding_column;
    END IF;
    -- Names alter_vectorizer and the switch give: `name`.next belongs to the
    -- manager of `name`, `.replaced.` to no new vectorizer.
    IF v.name LIKE '%.replaced.%' OR (v.name LIKE '%.next' AND NOT EXISTS (
            SELECT FROM rowembed.vectorizer AS z
             WHERE pg_catalog.left(z.name, 123) || '.next' = v.name AND z.source = v.source
               AND z.owner = v.owner)) THEN
        RAISE EXCEPTION 'rowembed: the name % is kept for model changes', v.name
            USING HINT = 'Names ending in .next and containing .replaced. are given by alter_vectorizer.';
    END IF;
    v.replaces := NULL;
    v.keep_replaced := false;
    v.text_search := NULL;
    v.index_error := NULL;
    v.created_at := pg_catalog.now();
    INSERT INTO rowembed.vectorizer OVERRIDING SYSTEM VALUE SELECT (v).*;
    RETURN v.id;
END
$body$;

-- Changes settings of a vectorizer the session manages: only those listed
-- here (its tables, key and model never change in place).
CREATE OR REPLACE FUNCTION rowembed._catalog_set(vectorizer_id int, fields jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._managed(vectorizer_id);
    n rowembed.vectorizer;
    unknown text;
BEGIN
    SELECT k INTO unknown FROM pg_catalog.jsonb_object_keys(fields) AS k
     WHERE k <> ALL (ARRAY['min_similarity', 'query_instruction', 'rerank_model', 'max_attempts',
                           'text_search', 'index_state', 'index_error', 'replaces',
                           'keep_replaced'])
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rowembed: a vectorizer''s % is not changed in place', unknown;
    END IF;
    n := pg_catalog.jsonb_populate_record(v, fields);
    -- A replacement is of the same source and owner (complete_alters hands it
    -- the replaced one's name and drops that one).
    IF n.replaces IS DISTINCT FROM v.replaces AND n.replaces IS NOT NULL AND NOT EXISTS (
            SELECT FROM rowembed.vectorizer AS z
             WHERE z.id = n.replaces AND z.id <> v.id AND z.source = v.source
               AND z.owner = v.owner) THEN
        RAISE EXCEPTION 'rowembed: vectorizer % may replace only another of its source and owner',
            v.name USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE rowembed.vectorizer AS z
       SET min_similarity = n.min_similarity, query_instruction = n.query_instruction,
           rerank_model = n.rerank_model, max_attempts = n.max_attempts,
           text_search = n.text_search, index_state = n.index_state,
           index_error = pg_catalog.left(n.index_error, 500), replaces = n.replaces,
           keep_replaced = n.keep_replaced
     WHERE z.id = v.id;
END
$body$;

-- The switch's catalog half: the replacement `next_id` takes the name (and
-- full text search) of the vectorizer it replaces, which is renamed
-- `name`.replaced.<id>; returns that name.
CREATE OR REPLACE FUNCTION rowembed._catalog_switch(old_id int, next_id int) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    old rowembed.vectorizer := rowembed._managed(old_id);
    next rowembed.vectorizer := rowembed._managed(next_id);
    old_name text := pg_catalog.left(old.name, 100) || '.replaced.' || old.id;
BEGIN
    IF next.replaces IS DISTINCT FROM old.id THEN
        RAISE EXCEPTION 'rowembed: % does not replace %', next.name, old.name;
    END IF;
    UPDATE rowembed.vectorizer AS z SET name = old_name, text_search = NULL WHERE z.id = old.id;
    UPDATE rowembed.vectorizer AS z
       SET name = old.name, replaces = NULL, text_search = old.text_search
     WHERE z.id = next.id;
    RETURN old_name;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed._catalog_delete(vectorizer_id int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $body$
BEGIN
    PERFORM rowembed._managed(vectorizer_id);
    DELETE FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id;
END
$body$;

-- Starts (or restarts) a backfill of a vectorizer the session manages; false
-- when one is running.
CREATE OR REPLACE FUNCTION rowembed._backfill_start(vectorizer_id int) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $body$
BEGIN
    PERFORM rowembed._managed(vectorizer_id);
    INSERT INTO rowembed.backfill AS b (vectorizer_id, state) VALUES (vectorizer_id, 'running')
    ON CONFLICT ON CONSTRAINT backfill_pkey DO UPDATE
        SET state = 'running', last_key = NULL, scanned = 0, queued = 0,
            started_at = pg_catalog.now(), updated_at = pg_catalog.now()
        WHERE b.state <> 'running';
    RETURN FOUND;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed._backfill_cancel(vectorizer_id int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $body$
BEGIN
    PERFORM rowembed._managed(vectorizer_id);
    UPDATE rowembed.backfill AS b SET state = 'cancelled', updated_at = pg_catalog.now()
     WHERE b.vectorizer_id = _backfill_cancel.vectorizer_id AND b.state = 'running';
END
$body$;

-- Whether the session may queue rows of vectorizer `v` (its workers and
-- dispatcher, its owner).
CREATE OR REPLACE FUNCTION rowembed._session_queues(v rowembed.vectorizer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(pg_catalog.has_table_privilege(session_user, v.queue_table, 'INSERT'), false)
$$;

-- The running backfill of `vectorizer_id`, locked for this transaction (NULL
-- when none, or another session steps it): backfill_step's cursor.
CREATE OR REPLACE FUNCTION rowembed._backfill_lock(vectorizer_id int) RETURNS rowembed.backfill
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    b rowembed.backfill;
BEGIN
    IF NOT rowembed._session_queues((SELECT z FROM rowembed.vectorizer AS z
                                     WHERE z.id = vectorizer_id)) THEN
        RAISE EXCEPTION 'rowembed: % may not queue rows of vectorizer %', session_user,
            vectorizer_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO b FROM rowembed.backfill AS z
     WHERE z.vectorizer_id = _backfill_lock.vectorizer_id AND z.state = 'running'
       FOR UPDATE SKIP LOCKED;
    RETURN b;
END
$body$;

-- A backfill chunk's progress, recorded under the lock _backfill_lock took.
CREATE OR REPLACE FUNCTION rowembed._backfill_record(
    vectorizer_id int, scanned bigint, queued bigint, next_key jsonb, done boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $body$
BEGIN
    PERFORM rowembed._backfill_lock(vectorizer_id);
    UPDATE rowembed.backfill AS z
       SET scanned = z.scanned + _backfill_record.scanned,
           queued = z.queued + _backfill_record.queued,
           last_key = coalesce(next_key, z.last_key), updated_at = pg_catalog.now(),
           state = CASE WHEN done THEN 'done' ELSE 'running' END
     WHERE z.vectorizer_id = _backfill_record.vectorizer_id AND z.state = 'running';
END
$body$;

-- A worker's batch, for metrics and status(): by a role that works the vectorizer.
CREATE OR REPLACE FUNCTION rowembed._record_batch(stats jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    s rowembed.batch_stats := pg_catalog.jsonb_populate_record(NULL::rowembed.batch_stats, stats);
BEGIN
    IF NOT coalesce((SELECT pg_catalog.has_table_privilege(session_user, z.queue_table, 'UPDATE')
                       FROM rowembed.vectorizer AS z WHERE z.id = s.vectorizer_id), false) THEN
        RAISE EXCEPTION 'rowembed: % does not work vectorizer %', session_user, s.vectorizer_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    s.finished_at := pg_catalog.now();
    INSERT INTO rowembed.batch_stats SELECT (s).*;
END
$body$;

-- batch_stats is a rolling log: a day of it.
CREATE OR REPLACE FUNCTION rowembed._prune_batch_stats() RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$
    DELETE FROM rowembed.batch_stats WHERE finished_at < pg_catalog.now() - interval '1 day'
$$;

-- EXECUTE on the catalog's writers a role needs: a creator all, a worker those
-- of backfills and batches.
CREATE OR REPLACE FUNCTION rowembed._grant_catalog_writers(role name, creator boolean)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['_backfill_lock(int)', '_backfill_record(int, bigint, bigint, jsonb, boolean)',
                              '_record_batch(jsonb)', '_prune_batch_stats()'] LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION rowembed.%s TO %I', fn, role);
    END LOOP;
    IF creator THEN
        FOREACH fn IN ARRAY ARRAY['_catalog_insert(jsonb)', '_catalog_set(int, jsonb)',
                                  '_catalog_switch(int, int)', '_catalog_delete(int)',
                                  '_backfill_start(int)', '_backfill_cancel(int)',
                                  '_training_insert(int, jsonb, text[], text[])'] LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION rowembed.%s TO %I', fn, role);
        END LOOP;
    END IF;
END
$body$;

DO $revoke$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc AS p
               WHERE p.pronamespace = 'rowembed'::regnamespace AND p.prosecdef
                 AND (p.proname LIKE '\_catalog\_%' OR p.proname LIKE '\_backfill\_%'
                      OR p.proname IN ('_record_batch', '_prune_batch_stats')) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$revoke$;

-- The role a session acts as while it reads or writes vectorizer
-- `vectorizer_id`'s tables: its owner, where the session may be it and is not
-- already (a superuser's worker or dispatcher, a member of the owner's role);
-- else NULL. An owner can attach code to her tables (triggers, defaults, domain
-- checks, policies) that runs with the rights of whoever touches them: it then
-- runs with hers. The worker and dispatcher SET LOCAL ROLE to it.
CREATE OR REPLACE FUNCTION rowembed._run_as(vectorizer_id int) RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT r.rolname FROM rowembed.vectorizer AS z JOIN pg_catalog.pg_roles AS r ON r.oid = z.owner
     WHERE z.id = vectorizer_id AND r.rolname <> current_user
       AND pg_catalog.pg_has_role(session_user, z.owner, 'MEMBER')
$$;
