-- Changing a vectorizer's model, size or chunking without downtime: a
-- replacement is built beside it through the queue (a backfill, and live changes
-- to both), searches keep using the old one until the replacement has every row
-- and its index, then the two switch in one transaction.

-- The vectorizer being built to replace `v`, if any (the catalog's writer
-- lets `replaces` name only a vectorizer of the same source and owner).
CREATE OR REPLACE FUNCTION rowembed._replacement_of(v rowembed.vectorizer)
RETURNS rowembed.vectorizer
LANGUAGE sql STABLE AS $$
    SELECT z.* FROM rowembed.vectorizer AS z WHERE z.replaces = v.id
$$;

-- The grants of table `old_table` given again on `new_table` (a worker's and a
-- searcher's privileges follow the vectorizer to its new tables).
CREATE OR REPLACE FUNCTION rowembed._copy_grants(old_table regclass, new_table regclass)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.grantee, a.privilege_type
               FROM pg_class AS c, aclexplode(c.relacl) AS a
              WHERE c.oid = old_table AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON %s TO %s', g.privilege_type, new_table,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.grantee::regrole::text) END);
    END LOOP;
END
$body$;

-- Changes vectorizer `name`'s options (pgplugin/options.py declares which
-- ones and how). Given only options that queries or retries read
-- (min_similarity, query_instruction, rerank_model, max_attempts), its catalog
-- row changes in place and its id is returned. Otherwise it starts rebuilding
-- `name` with the options given (the others stay as they are; a new model
-- brings its own dimensions, instructions and threshold unless given) and
-- returns the replacement's id; its name is `name`.next until the switch, its
-- table <destination>_next, and status() shows its progress.
CREATE OR REPLACE FUNCTION rowembed.alter_vectorizer(
    name text,
    model text DEFAULT NULL,
    dimensions int DEFAULT NULL,
    chunking text DEFAULT NULL,
    chunk_tokens int DEFAULT NULL,
    chunk_overlap int DEFAULT NULL,
    max_chunks int DEFAULT NULL,
    storage text DEFAULT NULL,
    index_method text DEFAULT NULL,
    min_similarity float8 DEFAULT NULL,
    query_instruction text DEFAULT NULL,
    passage_instruction text DEFAULT NULL,
    keep_old boolean DEFAULT false,
    rerank_model text DEFAULT NULL,
    max_attempts int DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(alter_vectorizer.name);
    same_model boolean := alter_vectorizer.model IS NULL OR alter_vectorizer.model = v.model;
    dest_schema name;
    dest_table name;
    new_id int;
    fresh rowembed.vectorizer;
BEGIN
    IF num_nonnulls(alter_vectorizer.model, alter_vectorizer.dimensions, alter_vectorizer.chunking,
                    alter_vectorizer.chunk_tokens, alter_vectorizer.chunk_overlap,
                    alter_vectorizer.max_chunks, alter_vectorizer.storage,
                    alter_vectorizer.index_method, alter_vectorizer.passage_instruction) = 0 THEN
        IF alter_vectorizer.max_attempts < 1 THEN
            RAISE EXCEPTION 'rowembed: max_attempts must be at least 1';
        END IF;
        PERFORM rowembed._catalog_set(v.id, jsonb_strip_nulls(jsonb_build_object(
            'min_similarity', alter_vectorizer.min_similarity,
            'query_instruction', alter_vectorizer.query_instruction,
            'rerank_model', alter_vectorizer.rerank_model,
            'max_attempts', alter_vectorizer.max_attempts)));
        RETURN v.id;
    END IF;
    IF v.replaces IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: % is itself a replacement being built', v.name;
    ELSIF (rowembed._replacement_of(v)).id IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: % is already being rebuilt as %', v.name,
            (rowembed._replacement_of(v)).name
            USING HINT = format('SELECT rowembed.cancel_alter(%L); cancels it.', v.name);
    ELSIF rowembed._problem(v) IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: % cannot be rebuilt: %', v.name, rowembed._problem(v);
    END IF;
    SELECT n.nspname, c.relname INTO dest_schema, dest_table
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v.destination;
    new_id := rowembed.create_vectorizer(
        v.source, v.text_columns,
        name => left(v.name, 123) || '.next',
        model => coalesce(alter_vectorizer.model, v.model),
        dimensions => coalesce(alter_vectorizer.dimensions,
                               CASE WHEN same_model THEN v.dimensions END),
        destination => format('%I.%I', dest_schema, left(dest_table, 58) || '_next'),
        embedding_column => v.embedding_column,
        separator => v.separator,
        min_similarity => coalesce(alter_vectorizer.min_similarity,
                                   CASE WHEN same_model THEN v.min_similarity END),
        query_instruction => coalesce(alter_vectorizer.query_instruction,
                                      CASE WHEN same_model THEN v.query_instruction END),
        rerank_model => coalesce(alter_vectorizer.rerank_model, v.rerank_model),
        max_attempts => coalesce(alter_vectorizer.max_attempts, v.max_attempts),
        backfill => true,
        storage => coalesce(alter_vectorizer.storage, v.storage),
        index_method => coalesce(alter_vectorizer.index_method, v.index_method),
        defer_index_above => v.defer_index_above,
        passage_instruction => coalesce(alter_vectorizer.passage_instruction,
                                        CASE WHEN same_model THEN v.passage_instruction END),
        chunking => coalesce(alter_vectorizer.chunking, v.chunking),
        chunk_tokens => coalesce(alter_vectorizer.chunk_tokens, v.chunk_tokens),
        chunk_overlap => coalesce(alter_vectorizer.chunk_overlap, v.chunk_overlap),
        max_chunks => coalesce(alter_vectorizer.max_chunks, v.max_chunks));
    PERFORM rowembed._catalog_set(new_id, jsonb_build_object(
        'replaces', v.id, 'keep_replaced', alter_vectorizer.keep_old));
    SELECT * INTO fresh FROM rowembed.vectorizer AS z WHERE z.id = new_id;
    PERFORM rowembed._copy_grants(v.destination, fresh.destination);
    PERFORM rowembed._copy_grants(v.queue_table, fresh.queue_table);
    PERFORM rowembed._copy_grants(v.queue_table, rowembed._change_log(fresh.id));
    RETURN new_id;
END
$body$;

-- Stops rebuilding `name`: the replacement and its tables go, `name` stays as it is.
CREATE OR REPLACE FUNCTION rowembed.cancel_alter(name text) RETURNS boolean
LANGUAGE plpgsql AS $body$
DECLARE
    next rowembed.vectorizer := rowembed._replacement_of(rowembed._vectorizer_named(name));
BEGIN
    IF next.id IS NULL THEN
        RETURN false;
    END IF;
    PERFORM rowembed.drop_vectorizer(next.name);
    RETURN true;
END
$body$;

-- Why replacement `next` cannot take over yet, or NULL when it can: every
-- existing row embedded (its backfill done and drained; a failed row waits for
-- retry or cancel), its live changes no further behind than those of the
-- vectorizer it replaces (under a steady write load neither queue is ever
-- empty; the changes still queued are worked on after the switch as before it),
-- its index built.
CREATE OR REPLACE FUNCTION rowembed._switch_blocker(next rowembed.vectorizer) RETURNS text
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    old rowembed.vectorizer;
    waits record;
    old_waits record;
BEGIN
    SELECT * INTO old FROM rowembed.vectorizer AS z WHERE z.id = next.replaces;
    IF rowembed._problem(next) IS NOT NULL THEN
        RETURN rowembed._problem(next);
    ELSIF EXISTS (SELECT FROM rowembed.backfill AS b
                   WHERE b.vectorizer_id = next.id AND b.state <> 'done') THEN
        RETURN 'its backfill is not done';
    END IF;
    waits := rowembed._queue_counts(next.queue_table);
    old_waits := rowembed._queue_counts(old.queue_table);
    IF waits.backfill > 0 THEN
        RETURN format('%s rows of its backfill wait to be embedded', waits.backfill);
    ELSIF waits.failed > 0 THEN
        RETURN format('%s rows failed (rowembed errors %s; retry or cancel_alter)',
                      waits.failed, next.name);
    ELSIF waits.changes > old_waits.changes THEN
        RETURN format('%s changes wait to be embedded (%s in %s)', waits.changes,
                      old_waits.changes, old.name);
    ELSIF next.index_method <> 'none' AND next.index_state <> 'built' THEN
        RETURN 'its index is not built yet';
    END IF;
    RETURN NULL;
END
$body$;

-- A queue's entries: backfill and live changes waiting, and parked (failed).
CREATE OR REPLACE FUNCTION rowembed._queue_counts(
    queue regclass, OUT backfill bigint, OUT changes bigint, OUT failed bigint)
LANGUAGE plpgsql STABLE AS $body$
BEGIN
    EXECUTE format('SELECT count(*) FILTER (WHERE failed_at IS NULL AND priority = $1),'
                   ' count(*) FILTER (WHERE failed_at IS NULL AND priority <> $1),'
                   ' count(*) FILTER (WHERE failed_at IS NOT NULL) FROM %s',
                   rowembed._qualified(queue))
        INTO backfill, changes, failed USING rowembed.backfill_priority();
    changes := changes + rowembed._logged_changes(queue);
END
$body$;

-- The switch, in the caller's transaction: the replacement takes the old one's
-- name and destination table name (and its full text index, when it had one);
-- the old one is dropped, or kept (as `name`.replaced.<id>, its table as
-- <table>_replaced_<id>) when asked for.
CREATE OR REPLACE FUNCTION rowembed._switch(old rowembed.vectorizer, next rowembed.vectorizer)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    dest_table name := (SELECT c.relname FROM pg_class c WHERE c.oid = old.destination);
    old_name text;
BEGIN
    -- Searches read the destinations: wait briefly for them, else try again later.
    SET LOCAL lock_timeout = '5s';
    EXECUTE format('ALTER TABLE %s RENAME TO %I', rowembed._qualified(old.destination),
                   left(dest_table, 45) || '_replaced_' || old.id);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', rowembed._qualified(next.destination), dest_table);
    IF old.text_search IS NOT NULL THEN  -- the same text, so the same index: it moves
        EXECUTE format('ALTER FUNCTION %s RENAME TO %I', rowembed._capture_function(old, 'document'),
                       'rowembed_vz_' || next.id || '_document');
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I',
                       (SELECT n.nspname FROM pg_class c JOIN pg_namespace n
                          ON n.oid = c.relnamespace WHERE c.oid = old.source),
                       rowembed._document_name(old), rowembed._document_name(next));
    END IF;
    old_name := rowembed._catalog_switch(old.id, next.id);
    IF NOT next.keep_replaced THEN
        PERFORM rowembed.drop_vectorizer(old_name);
    ELSE
        PERFORM rowembed._install_triggers(old.id);
    END IF;
    -- The trigger functions name the tables they write: both were renamed.
    PERFORM rowembed._install_triggers(next.id);
END
$body$;

-- Switches every replacement that is complete and whose tables the current role
-- owns (the dispatcher calls it each sweep; a dispatcher running as a worker
-- role leaves it to the owner). One that cannot switch now waits; the others go
-- on. Returns the names switched.
CREATE OR REPLACE FUNCTION rowembed.complete_alters() RETURNS SETOF text
LANGUAGE plpgsql SET lock_timeout = '500ms' AS $body$
DECLARE
    next rowembed.vectorizer;
    old rowembed.vectorizer;
BEGIN
    FOR next IN SELECT z.* FROM rowembed._visible_vectorizers() AS z
                  JOIN pg_class AS c ON c.oid = z.destination
                 WHERE z.replaces IS NOT NULL AND pg_has_role(c.relowner, 'USAGE') LOOP
        SELECT * INTO old FROM rowembed.vectorizer AS z WHERE z.id = next.replaces;
        BEGIN
            CONTINUE WHEN rowembed._switch_blocker(next) IS NOT NULL;
            PERFORM rowembed._switch(old, next);
            RETURN NEXT old.name;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'rowembed: % could not switch to its replacement yet: %', old.name, SQLERRM;
        END;
    END LOOP;
END
$body$;
