-- rowembed SQL functions. Idempotent: `rowembed migrate` re-applies this whole file
-- after the migrations, so a fix here reaches every database on upgrade. Tables live
-- in migrations/; nothing here may create or alter a table outside a vectorizer.
--
-- Dynamic SQL is built only with format('%I'/'%L'), regclass and EXECUTE ... USING.
-- Every function pins search_path (the DO block at the end of this file).

-- ---------------------------------------------------------------------------
-- Model facts used for defaults
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION rowembed.model_dimensions(model text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE regexp_replace(model, '^.*/', '')
        WHEN 'bge-small-en-v1.5' THEN 384
        WHEN 'bge-base-en-v1.5' THEN 768
        WHEN 'bge-large-en-v1.5' THEN 1024
        WHEN 'all-MiniLM-L6-v2' THEN 384
        WHEN 'all-MiniLM-L12-v2' THEN 384
        WHEN 'all-mpnet-base-v2' THEN 768
    END
$$;

-- bge v1.5 English models want this prefix on queries (never on passages).
CREATE OR REPLACE FUNCTION rowembed.default_query_instruction(model text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN model ~* 'bge-(small|base|large)-en'
        THEN 'Represent this sentence for searching relevant passages: '
        ELSE '' END
$$;

-- bge similarities cluster in about [0.6, 1]; other sentence encoders spread lower.
-- A starting point only: calibrate on your own data (README, "Thresholds").
CREATE OR REPLACE FUNCTION rowembed.default_min_similarity(model text) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN model ~* 'bge-' THEN 0.7 ELSE 0.3 END
$$;

-- ---------------------------------------------------------------------------
-- Identifier helpers: lists of quoted columns, and join conditions
-- ---------------------------------------------------------------------------

-- 'p.a, p.b' (prefix may be empty: 'a, b')
CREATE OR REPLACE FUNCTION rowembed._columns(cols name[], prefix text DEFAULT '')
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(
        CASE WHEN prefix = '' THEN format('%I', c) ELSE format('%s.%I', prefix, c) END,
        ', ' ORDER BY o)
    FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$;

-- 'l.a = r.a AND l.b = r.b'
CREATE OR REPLACE FUNCTION rowembed._equal(cols name[], l text, r text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%s.%I = %s.%I', l, c, r, c), ' AND ' ORDER BY o)
    FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$;

-- '"schema"."table"' for a relation, whatever the caller's search_path
CREATE OR REPLACE FUNCTION rowembed._qualified(rel regclass)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;

-- ---------------------------------------------------------------------------
-- Change capture: per-vectorizer trigger functions, generated from the catalog
-- ---------------------------------------------------------------------------

-- (Re)creates the trigger functions and triggers of one vectorizer. Called by
-- create_vectorizer and again on every migrate, so trigger fixes ship on upgrade.
-- The functions are SECURITY DEFINER because the application roles that write the
-- source table must not need any privilege on rowembed's queue or embeddings.
CREATE OR REPLACE FUNCTION rowembed._install_triggers(vectorizer_id int) RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    fn text;
    queue text;
    dest text;
    keys text;
    upsert text;
    old_key text;
    new_key text;
    watched text;
BEGIN
    SELECT * INTO STRICT v FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id;
    IF rowembed._qualified(v.source) IS NULL THEN
        RETURN;  -- the source table was dropped; nothing to capture
    END IF;
    fn := 'rowembed._vz_' || v.id;
    queue := rowembed._qualified(v.queue_table);
    dest := rowembed._qualified(v.destination);
    keys := rowembed._columns(v.pk_columns);
    upsert := format(
        'ON CONFLICT (%s) DO UPDATE SET seq = excluded.seq, priority = 0, attempts = 0,'
        ' lease_until = NULL, claimed_by = NULL, last_error = NULL, failed_at = NULL,'
        ' enqueued_at = now()',
        keys);
    SELECT string_agg(format('OLD.%I', c), ', ' ORDER BY o),
           string_agg(format('NEW.%I', c), ', ' ORDER BY o)
      INTO old_key, new_key
      FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);

    -- INSERT: one set-based statement per source statement (COPY and bulk inserts).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s_inserted() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN
            INSERT INTO %2$s (%3$s, seq, priority)
            SELECT %3$s, nextval('rowembed.change_seq'), 0 FROM new_rows
            %4$s;
            IF FOUND THEN
                PERFORM pg_notify('rowembed', %5$L);
            END IF;
            RETURN NULL;
        END $fn$ $f$, fn, queue, keys, upsert, v.id::text);

    -- UPDATE: fires only when an embedded column or the key changed (see WHEN below).
    -- A key change moves the embedding to the new key and queues both keys; the
    -- worker then finds the text unchanged and skips the model. Locks are taken on
    -- the queue before the embeddings, in the same order as the worker.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s_updated() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        DECLARE
            moved_embedding %2$s.%9$I%%TYPE;
            moved_hash bytea;
        BEGIN
            IF (%3$s) IS DISTINCT FROM (%4$s) THEN
                -- Both keys are queued: the old one so the worker confirms it is gone
                -- (in a key swap it is not) and any claim on it is voided.
                INSERT INTO %5$s (%6$s, seq, priority)
                VALUES (%3$s, nextval('rowembed.change_seq'), 0),
                       (%4$s, nextval('rowembed.change_seq'), 0) %7$s;
                DELETE FROM %2$s WHERE (%6$s) = (%3$s)
                RETURNING %9$I, text_hash INTO moved_embedding, moved_hash;
                IF FOUND THEN
                    INSERT INTO %2$s (%6$s, %9$I, text_hash) VALUES (%4$s, moved_embedding, moved_hash)
                    ON CONFLICT (%6$s) DO UPDATE
                    SET %9$I = excluded.%9$I, text_hash = excluded.text_hash, embedded_at = now();
                END IF;
            ELSE
                INSERT INTO %5$s (%6$s, seq, priority)
                VALUES (%4$s, nextval('rowembed.change_seq'), 0) %7$s;
            END IF;
            PERFORM pg_notify('rowembed', %8$L);
            RETURN NULL;
        END $fn$ $f$, fn, dest, old_key, new_key, queue, keys, upsert, v.id::text,
        v.embedding_column);

    -- DELETE: the embedding goes in the same transaction; the queue entry too, which
    -- also voids any claim a worker holds on it (its write then finds nothing to do).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s_deleted() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN
            DELETE FROM %2$s AS q USING old_rows AS o WHERE %4$s;
            DELETE FROM %3$s AS e USING old_rows AS o WHERE %5$s;
            RETURN NULL;
        END $fn$ $f$, fn, queue, dest,
        rowembed._equal(v.pk_columns, 'q', 'o'), rowembed._equal(v.pk_columns, 'e', 'o'));

    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s_truncated() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN
            TRUNCATE %2$s, %3$s;
            RETURN NULL;
        END $fn$ $f$, fn, queue, dest);

    SELECT string_agg(format('OLD.%I::text', c), ', ' ORDER BY o)
           || ') IS DISTINCT FROM ('
           || string_agg(format('NEW.%I::text', c), ', ' ORDER BY o)
      INTO watched
      FROM unnest(v.text_columns || v.pk_columns) WITH ORDINALITY AS u(c, o);

    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %s'
                   ' REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s_inserted()',
                   'rowembed_' || v.id || '_insert', v.source, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW'
                   ' WHEN ((%s)) EXECUTE FUNCTION %s_updated()',
                   'rowembed_' || v.id || '_update', v.source, watched, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %s'
                   ' REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s_deleted()',
                   'rowembed_' || v.id || '_delete', v.source, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s_truncated()',
                   'rowembed_' || v.id || '_truncate', v.source, fn);
END
$body$;

-- ---------------------------------------------------------------------------
-- Vectorizers
-- ---------------------------------------------------------------------------

-- The vectorizer called `name`, or a clear error.
CREATE OR REPLACE FUNCTION rowembed._vectorizer_named(name text) RETURNS rowembed.vectorizer
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.name = _vectorizer_named.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rowembed: no vectorizer named %', _vectorizer_named.name;
    END IF;
    RETURN v;
END
$body$;


-- 0002 added options; drop the older signature so no overload remains.
DROP FUNCTION IF EXISTS rowembed.create_vectorizer(
    regclass, name[], text, text, int, text, name, text, float8, text, text, int, boolean);

CREATE OR REPLACE FUNCTION rowembed.create_vectorizer(
    source regclass,
    text_columns name[],
    name text DEFAULT NULL,
    model text DEFAULT 'BAAI/bge-base-en-v1.5',
    dimensions int DEFAULT NULL,
    destination text DEFAULT NULL,
    embedding_column name DEFAULT 'embedding',
    separator text DEFAULT E'\n',
    min_similarity float8 DEFAULT NULL,
    query_instruction text DEFAULT NULL,
    rerank_model text DEFAULT 'BAAI/bge-reranker-base',
    max_attempts int DEFAULT 5,
    backfill boolean DEFAULT true,
    storage text DEFAULT 'vector',
    index_method text DEFAULT 'hnsw',
    defer_index_above bigint DEFAULT 100000
) RETURNS int
LANGUAGE plpgsql AS $body$
DECLARE
    -- Column names rowembed adds beside the key in its own tables.
    reserved constant name[] := ARRAY['seq', 'priority', 'attempts', 'lease_until',
        'claimed_by', 'last_error', 'failed_at', 'enqueued_at', 'text_hash', 'embedded_at'];
    src_schema name;
    src_table name;
    src_kind "char";
    pk_cols name[];
    pk_types text[];
    dest_parts text[];
    dest_schema name;
    dest_table name;
    missing name;
    new_id int;
    queue text;
    key_defs text;
    keys text;
BEGIN
    SELECT n.nspname, c.relname, c.relkind INTO src_schema, src_table, src_kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = create_vectorizer.source;
    IF src_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'rowembed: % is not a table', create_vectorizer.source;
    END IF;

    SELECT array_agg(a.attname ORDER BY k.ord),
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO pk_cols, pk_types
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = create_vectorizer.source AND i.indisprimary;
    IF pk_cols IS NULL THEN
        RAISE EXCEPTION 'rowembed: table % has no primary key', create_vectorizer.source
            USING HINT = 'Embeddings are keyed by primary key: ALTER TABLE ... ADD PRIMARY KEY.';
    END IF;

    IF create_vectorizer.text_columns IS NULL OR cardinality(create_vectorizer.text_columns) = 0 THEN
        RAISE EXCEPTION 'rowembed: text_columns must name at least one column';
    END IF;
    SELECT c INTO missing FROM unnest(create_vectorizer.text_columns) AS u(c)
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_attribute a
        WHERE a.attrelid = create_vectorizer.source AND a.attname = u.c
          AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rowembed: table % has no column %',
            create_vectorizer.source, quote_ident(missing);
    END IF;

    SELECT c INTO missing FROM unnest(pk_cols || create_vectorizer.embedding_column) AS u(c)
    WHERE u.c = ANY (reserved) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rowembed: column name % is reserved by rowembed', quote_ident(missing)
            USING HINT = format('Reserved names: %s. Pick another embedding_column.', reserved);
    END IF;
    IF create_vectorizer.embedding_column = ANY (pk_cols) THEN
        RAISE EXCEPTION 'rowembed: embedding_column % is a primary key column',
            quote_ident(create_vectorizer.embedding_column);
    END IF;

    IF create_vectorizer.storage IS NULL OR create_vectorizer.storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'rowembed: storage must be vector or halfvec, not %',
            coalesce(quote_literal(create_vectorizer.storage), 'NULL');
    END IF;
    IF create_vectorizer.index_method IS NULL
       OR create_vectorizer.index_method NOT IN ('hnsw', 'hnsw_binary', 'none') THEN
        RAISE EXCEPTION 'rowembed: index_method must be hnsw, hnsw_binary or none, not %',
            coalesce(quote_literal(create_vectorizer.index_method), 'NULL');
    END IF;

    create_vectorizer.dimensions := coalesce(create_vectorizer.dimensions,
                                             rowembed.model_dimensions(create_vectorizer.model));
    IF create_vectorizer.dimensions IS NULL THEN
        RAISE EXCEPTION 'rowembed: unknown output size for model %', create_vectorizer.model
            USING HINT = 'Pass dimensions => N (the hidden size of the encoder).';
    END IF;

    IF create_vectorizer.destination IS NULL THEN
        dest_schema := src_schema;
        dest_table := src_table || '_embeddings';
    ELSE
        dest_parts := parse_ident(create_vectorizer.destination);
        IF cardinality(dest_parts) = 1 THEN
            dest_schema := src_schema;
            dest_table := dest_parts[1];
        ELSIF cardinality(dest_parts) = 2 THEN
            dest_schema := dest_parts[1];
            dest_table := dest_parts[2];
        ELSE
            RAISE EXCEPTION 'rowembed: destination % is not [schema.]table',
                create_vectorizer.destination;
        END IF;
    END IF;
    IF to_regclass(format('%I.%I', dest_schema, dest_table)) IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: destination %.% already exists',
            quote_ident(dest_schema), quote_ident(dest_table)
            USING HINT = 'Pass destination => ''another_name'' or drop the old vectorizer.';
    END IF;

    new_id := nextval(pg_get_serial_sequence('rowembed.vectorizer', 'id'));
    queue := format('rowembed.%I', 'queue_' || new_id);
    keys := rowembed._columns(pk_cols);
    SELECT string_agg(format('%I %s', c, t), ', ' ORDER BY o) INTO key_defs
      FROM unnest(pk_cols, pk_types) WITH ORDINALITY AS u(c, t, o);

    -- The durable queue: one entry per changed row, whatever the number of changes.
    EXECUTE format(
        'CREATE TABLE %s (%s, seq bigint NOT NULL, priority smallint NOT NULL DEFAULT 0,'
        ' attempts int NOT NULL DEFAULT 0, lease_until timestamptz, claimed_by int,'
        ' last_error text, failed_at timestamptz, enqueued_at timestamptz NOT NULL DEFAULT now(),'
        ' PRIMARY KEY (%s))', queue, key_defs, keys);
    EXECUTE format('CREATE UNIQUE INDEX ON %s (seq)', queue);
    EXECUTE format('CREATE INDEX ON %s (priority, seq) WHERE failed_at IS NULL', queue);

    EXECUTE format(
        'CREATE TABLE %I.%I (%s, %I %s(%s) NOT NULL, text_hash bytea NOT NULL,'
        ' embedded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
        dest_schema, dest_table, key_defs, create_vectorizer.embedding_column,
        create_vectorizer.storage, create_vectorizer.dimensions, keys);

    INSERT INTO rowembed.vectorizer (
        id, name, source, pk_columns, pk_types, text_columns, separator, model, dimensions,
        destination, embedding_column, queue_table, min_similarity, query_instruction,
        rerank_model, max_attempts, storage, index_method, defer_index_above)
    OVERRIDING SYSTEM VALUE
    VALUES (
        new_id,
        coalesce(create_vectorizer.name, src_table),
        create_vectorizer.source, pk_cols, pk_types, create_vectorizer.text_columns,
        create_vectorizer.separator, create_vectorizer.model, create_vectorizer.dimensions,
        format('%I.%I', dest_schema, dest_table)::regclass,
        create_vectorizer.embedding_column, queue::regclass,
        coalesce(create_vectorizer.min_similarity,
                 rowembed.default_min_similarity(create_vectorizer.model)),
        coalesce(create_vectorizer.query_instruction,
                 rowembed.default_query_instruction(create_vectorizer.model)),
        create_vectorizer.rerank_model, create_vectorizer.max_attempts,
        create_vectorizer.storage, create_vectorizer.index_method,
        create_vectorizer.defer_index_above);

    PERFORM rowembed._install_triggers(new_id);

    IF create_vectorizer.backfill THEN
        -- start_backfill defers the index when it would load more rows than
        -- defer_index_above. Small tables are queued here and now; the
        -- dispatcher queues the rest of a large one chunk by chunk.
        PERFORM rowembed.start_backfill(coalesce(create_vectorizer.name, src_table));
        PERFORM rowembed.backfill_step(new_id, 10000);
    END IF;
    IF create_vectorizer.index_method <> 'none'
       AND (SELECT z.index_state FROM rowembed.vectorizer AS z WHERE z.id = new_id) = 'built' THEN
        EXECUTE rowembed._index_sql(new_id, false);
    END IF;
    RETURN new_id;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed.drop_vectorizer(name text, drop_destination boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    event text;
BEGIN
    v := rowembed._vectorizer_named(drop_vectorizer.name);
    FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        IF rowembed._qualified(v.source) IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                           'rowembed_' || v.id || '_' || event, v.source);
        END IF;
    END LOOP;
    FOREACH event IN ARRAY ARRAY['inserted', 'updated', 'deleted', 'truncated'] LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS rowembed.%I()', '_vz_' || v.id || '_' || event);
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS %s', rowembed._qualified(v.queue_table));
    IF drop_destination AND rowembed._qualified(v.destination) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %s', rowembed._qualified(v.destination));
    END IF;
    DELETE FROM rowembed.vectorizer AS z WHERE z.id = v.id;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed.set_min_similarity(name text, min_similarity float8)
RETURNS void
LANGUAGE sql AS $$
    UPDATE rowembed.vectorizer AS z SET min_similarity = set_min_similarity.min_similarity
    WHERE z.name = set_min_similarity.name
$$;

-- Worker sessions alive now. A worker holds the advisory lock (7499639, token)
-- for as long as its connection lives; its claims carry the token. When the
-- session dies (SIGKILL, OOM, lost machine, server restart) the lock goes with
-- it and the claims are free at once, without waiting for the lease to expire.
CREATE OR REPLACE FUNCTION rowembed.live_workers() RETURNS SETOF int
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint::int FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = 7499639 AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;

-- SQL text: the queue entry is claimed by a worker alive now ($1: live_workers()).
CREATE OR REPLACE FUNCTION rowembed._held_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'coalesce(lease_until >= now() AND claimed_by = ANY ($1), false)'
$$;

-- SQL text: the queue entry may be claimed now ($1: live_workers()): never
-- claimed, or its lease or back-off is over, or its worker is gone. The same
-- test as the worker's claim (workers/database.py).
CREATE OR REPLACE FUNCTION rowembed._claimable_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'failed_at IS NULL AND (lease_until IS NULL OR lease_until < now()'
           ' OR (claimed_by IS NOT NULL AND claimed_by <> ALL ($1)))'
$$;

-- Vectorizers with entries a worker may claim now, and whether any of those is a
-- live change (priority 0) rather than backfill: what the dispatcher's sweep
-- sends hints for (a lost hint is found here). Reads the first such entry only.
DO $drop$
BEGIN  -- 0002 added `changes`; drop the old form only (keeps grants on the new one)
    IF EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('rowembed.vectorizers_with_work()')
               AND prorettype = 'int4'::regtype) THEN
        DROP FUNCTION rowembed.vectorizers_with_work();
    END IF;
END
$drop$;
CREATE OR REPLACE FUNCTION rowembed.vectorizers_with_work()
RETURNS TABLE (id int, changes boolean)
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
    live int[] := ARRAY(SELECT rowembed.live_workers());
    first_priority smallint;
BEGIN
    FOR v IN SELECT * FROM rowembed.vectorizer AS z ORDER BY z.id LOOP
        EXECUTE format('SELECT priority FROM %s WHERE %s ORDER BY priority LIMIT 1',
                       rowembed._qualified(v.queue_table), rowembed._claimable_sql())
            INTO first_priority USING live;
        IF first_priority IS NOT NULL THEN
            id := v.id;
            changes := first_priority = 0;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$body$;

-- Per-vectorizer counts: exact for the queue; for destinations of over a million
-- rows, the planner's estimate (an exact count would read the whole table).
-- in_flight: claimed by a live worker; queued: the rest, entries backing off included.
-- 0002 added columns: replace the view and the function of the older form only.
DO $drop$
BEGIN
    IF EXISTS (SELECT FROM pg_proc WHERE oid = to_regprocedure('rowembed.status()')
               AND NOT 'storage' = ANY (proargnames)) THEN
        DROP VIEW IF EXISTS rowembed.vectorizer_status;
        DROP FUNCTION rowembed.status();
    END IF;
END
$drop$;

CREATE OR REPLACE FUNCTION rowembed.status()
RETURNS TABLE (name text, source regclass, model text, queued bigint, in_flight bigint,
               failed bigint, embedded bigint, rows_per_second float8, eta_seconds float8,
               backfill text, storage text, index text, id int)
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
    live int[] := ARRAY(SELECT rowembed.live_workers());
BEGIN
    FOR v IN SELECT * FROM rowembed.vectorizer AS z ORDER BY z.id LOOP
        name := v.name;
        source := v.source;
        model := v.model;
        id := v.id;
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE failed_at IS NULL AND NOT held),'
            '       count(*) FILTER (WHERE failed_at IS NULL AND held),'
            '       count(*) FILTER (WHERE failed_at IS NOT NULL)'
            '  FROM (SELECT failed_at, %s AS held FROM %s) AS q',
            rowembed._held_sql(), rowembed._qualified(v.queue_table))
            INTO queued, in_flight, failed USING live;
        embedded := rowembed._row_estimate(v.destination, 1000001);
        IF embedded <= 1000000 THEN
            EXECUTE format('SELECT count(*) FROM %s', rowembed._qualified(v.destination))
                INTO embedded;
        END IF;
        storage := format('%s(%s)', v.storage, v.dimensions);
        index := rowembed._index_status(v);
        -- Rows completed per second over the last minute of batches.
        SELECT sum(st.claimed - st.failed)
               / greatest(1, extract(epoch FROM now() - min(st.finished_at
                                                         - make_interval(secs => st.seconds))))
          INTO rows_per_second
          FROM rowembed.batch_stats AS st
         WHERE st.vectorizer_id = v.id AND st.finished_at > now() - interval '1 minute';
        rows_per_second := coalesce(rows_per_second, 0);
        eta_seconds := CASE WHEN rows_per_second > 0
                            THEN (queued + in_flight) / rows_per_second END;
        SELECT format('%s: %s rows scanned of about %s, %s queued', b.state, b.scanned,
                      greatest(c.reltuples, 0)::bigint, b.queued)
          INTO backfill
          FROM rowembed.backfill AS b JOIN pg_class AS c ON c.oid = v.source
         WHERE b.vectorizer_id = v.id;
        RETURN NEXT;
    END LOOP;
END
$body$;

CREATE OR REPLACE VIEW rowembed.vectorizer_status AS SELECT * FROM rowembed.status();

-- ---------------------------------------------------------------------------
-- The vector index: storage and index choices, deferred builds for bulk loads
-- ---------------------------------------------------------------------------

-- The destination's HNSW index (rowembed's), if there is one.
CREATE OR REPLACE FUNCTION rowembed._vector_index(v rowembed.vectorizer) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = v.destination AND a.amname = 'hnsw'
     ORDER BY i.indisvalid DESC LIMIT 1
$$;

-- The statement that builds vectorizer `vectorizer_id`'s index (NULL for index_method
-- none). CONCURRENTLY cannot run inside a function: clients execute that form.
CREATE OR REPLACE FUNCTION rowembed._index_sql(vectorizer_id int, online boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON %s USING hnsw (%s)',
        CASE WHEN online THEN 'CONCURRENTLY' ELSE '' END,
        left(c.relname || '_' || v.embedding_column || '_idx', 63),
        rowembed._qualified(v.destination),
        CASE v.index_method
            WHEN 'hnsw' THEN format('%I %s_cosine_ops', v.embedding_column, v.storage)
            ELSE format('(binary_quantize(%I)::bit(%s)) bit_hamming_ops',
                        v.embedding_column, v.dimensions) END)
      FROM rowembed.vectorizer AS v JOIN pg_class AS c ON c.oid = v.destination
     WHERE v.id = vectorizer_id AND v.index_method <> 'none'
$$;

-- An estimate of a table's rows: the planner's, else a count that stops at cap.
CREATE OR REPLACE FUNCTION rowembed._row_estimate(rel regclass, cap bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    n bigint;
BEGIN
    SELECT c.reltuples::bigint INTO n FROM pg_class c WHERE c.oid = rel;
    IF n < 0 THEN  -- never vacuumed or analyzed
        EXECUTE format('SELECT count(*) FROM (SELECT FROM %s LIMIT $1) AS r', rel) INTO n USING cap;
    END IF;
    RETURN n;
END
$body$;

-- Whether a backfill now would load more rows than defer_index_above (the source's
-- rows less those already embedded, estimated), so the index should wait.
CREATE OR REPLACE FUNCTION rowembed._defer_for_backlog(vectorizer_id int) RETURNS boolean
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id;
    RETURN v.index_method <> 'none' AND v.index_state = 'built'
       AND v.defer_index_above IS NOT NULL
       AND rowembed._row_estimate(v.source, v.defer_index_above + 1)
           - rowembed._row_estimate(v.destination, v.defer_index_above + 1) > v.defer_index_above;
END
$body$;

-- Drops the vector index until the backlog has drained; the dispatcher (or
-- `rowembed index NAME --build`) builds it then. Needs the destination's owner.
CREATE OR REPLACE FUNCTION rowembed.defer_index(name text) RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(defer_index.name);
    idx regclass := rowembed._vector_index(v);
    old_timeout text := current_setting('lock_timeout');
BEGIN
    IF v.index_method = 'none' THEN
        RETURN;
    END IF;
    IF v.id IN (SELECT rowembed._building()) THEN
        RAISE EXCEPTION 'rowembed: the index of % is being built now', v.name
            USING HINT = 'Try again once status() says it is built.';
    END IF;
    IF idx IS NOT NULL THEN
        -- DROP INDEX waits for every search on the table, and queues every new one
        -- behind it: give up after a few seconds rather than stall them.
        PERFORM set_config('lock_timeout', '5s', true);
        EXECUTE format('DROP INDEX %s', idx);
        PERFORM set_config('lock_timeout', old_timeout, true);
    END IF;
    UPDATE rowembed.vectorizer AS z SET index_state = 'deferred' WHERE z.id = v.id;
END
$body$;

-- The CREATE INDEX CONCURRENTLY statement of a deferred index (NULL when the
-- index is built or there is none). Run it outside a transaction block, then
-- call rowembed.index_built(name).
CREATE OR REPLACE FUNCTION rowembed.index_sql(name text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT rowembed._index_sql(v.id, true) FROM rowembed.vectorizer AS v
     WHERE v.name = index_sql.name AND v.index_state = 'deferred'
$$;

-- Records that a deferred index is built (true) if a valid one now exists.
CREATE OR REPLACE FUNCTION rowembed.index_built(name text) RETURNS boolean
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(index_built.name);
    idx regclass := rowembed._vector_index(v);
BEGIN
    IF idx IS NULL OR NOT (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = idx) THEN
        RETURN false;
    END IF;
    UPDATE rowembed.vectorizer AS z SET index_state = 'built', index_error = NULL
     WHERE z.id = v.id;
    RETURN true;
END
$body$;

-- Records why building a deferred index failed, for status().
CREATE OR REPLACE FUNCTION rowembed.index_failed(name text, error text) RETURNS void
LANGUAGE sql AS $$
    UPDATE rowembed.vectorizer AS z SET index_error = left(index_failed.error, 500)
     WHERE z.name = index_failed.name AND z.index_state = 'deferred'
$$;

-- Deferred indexes whose backlog has drained (no backfill running, no backfill
-- entry left in the queue) and that the current role may build (it owns the
-- destination and may record the result in rowembed.vectorizer) and no other
-- session is building: what the dispatcher builds.
CREATE OR REPLACE FUNCTION rowembed.indexes_to_build() RETURNS SETOF text
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
    backlog boolean;
BEGIN
    FOR v IN
        SELECT z.* FROM rowembed.vectorizer AS z JOIN pg_class AS c ON c.oid = z.destination
         WHERE z.index_state = 'deferred' AND pg_has_role(c.relowner, 'USAGE')
           AND has_table_privilege('rowembed.vectorizer', 'UPDATE')
           AND NOT EXISTS (SELECT 1 FROM rowembed.backfill AS b
                            WHERE b.vectorizer_id = z.id AND b.state = 'running')
           AND z.id NOT IN (SELECT rowembed._building())
         ORDER BY z.id
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE priority = 1 AND failed_at IS NULL)',
                       rowembed._qualified(v.queue_table)) INTO backlog;
        IF NOT backlog THEN
            RETURN NEXT v.name;
        END IF;
    END LOOP;
END
$body$;

-- Vectorizers whose index a session is building now: the builder holds the
-- advisory lock (7499640, vectorizer id) for as long as the build runs.
CREATE OR REPLACE FUNCTION rowembed._building() RETURNS SETOF int
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint::int FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = 7499640 AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;

-- How search() reads the index in words, for status().
CREATE OR REPLACE FUNCTION rowembed._index_status(v rowembed.vectorizer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN v.index_method = 'none' THEN 'none: exact scans'
        WHEN v.id IN (SELECT rowembed._building()) THEN v.index_method || ': building'
        WHEN v.index_state = 'deferred' AND v.index_error IS NOT NULL THEN v.index_method
             || ': deferred; the last build failed: ' || v.index_error
        WHEN v.index_state = 'deferred' THEN v.index_method
             || ': deferred until the backlog drains (searches scan exactly meanwhile)'
        WHEN rowembed._vector_index(v) IS NULL THEN v.index_method || ': missing'
        ELSE v.index_method || ': built' END
$$;

-- ---------------------------------------------------------------------------
-- Backfills
-- ---------------------------------------------------------------------------

-- Starts (or restarts) queueing a vectorizer's existing rows whose embedding is
-- missing or stale. A backfill already running is left alone, so two requests
-- do not double the work. Returns 'started' or 'already running'.
CREATE OR REPLACE FUNCTION rowembed.start_backfill(name text) RETURNS text
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    v := rowembed._vectorizer_named(start_backfill.name);
    INSERT INTO rowembed.backfill AS b (vectorizer_id, state) VALUES (v.id, 'running')
    ON CONFLICT (vectorizer_id) DO UPDATE
        SET state = 'running', last_key = NULL, scanned = 0, queued = 0,
            started_at = now(), updated_at = now()
        WHERE b.state <> 'running';
    IF NOT FOUND THEN
        RETURN 'already running';
    END IF;
    IF rowembed._defer_for_backlog(v.id) THEN
        BEGIN
            PERFORM rowembed.defer_index(v.name);
        EXCEPTION WHEN insufficient_privilege OR lock_not_available THEN
            RAISE NOTICE 'rowembed: the index of % stays live during this backfill (%)',
                v.name, SQLERRM;
        END;
    END IF;
    PERFORM pg_notify('rowembed', v.id || ' backfill');
    RETURN 'started';
END
$body$;

-- Stops a running backfill: no further chunks, and its queued rows that no
-- worker holds are dropped (live changes are never dropped: they have priority 0).
CREATE OR REPLACE FUNCTION rowembed.cancel_backfill(name text) RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    dropped bigint;
BEGIN
    v := rowembed._vectorizer_named(cancel_backfill.name);
    UPDATE rowembed.backfill SET state = 'cancelled', updated_at = now()
    WHERE vectorizer_id = v.id AND state = 'running';
    EXECUTE format('DELETE FROM %s WHERE priority = 1 AND claimed_by IS NULL'
                   ' AND failed_at IS NULL', rowembed._qualified(v.queue_table));
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN dropped;
END
$body$;

-- Queues the next chunk of a running backfill: up to chunk_size rows after the
-- cursor, in primary-key order, of which those without a current embedding go to
-- the queue behind live changes. One short transaction per chunk; concurrent
-- callers skip a backfill another is stepping. Returns the rows queued.
CREATE OR REPLACE FUNCTION rowembed.backfill_step(vectorizer_id int, chunk_size int)
RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    b rowembed.backfill;
    keys text;
    after_cursor text;
    n_scanned bigint;
    n_queued bigint;
    next_key jsonb;
BEGIN
    SELECT * INTO b FROM rowembed.backfill AS z
    WHERE z.vectorizer_id = backfill_step.vectorizer_id AND z.state = 'running'
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = backfill_step.vectorizer_id;
    keys := rowembed._columns(v.pk_columns, 's');
    after_cursor := CASE WHEN b.last_key IS NULL THEN 'true' ELSE format('(%s) > (%s)', keys,
        (SELECT string_agg(format('($2->>%L)::%s', c, t), ', ' ORDER BY o)
           FROM unnest(v.pk_columns, v.pk_types) WITH ORDINALITY AS u(c, t, o))) END;
    EXECUTE format($q$
        WITH chunk AS (
            SELECT %1$s, concat_ws(%2$L, %3$s) AS text FROM %4$s AS s
            WHERE %5$s ORDER BY %1$s LIMIT $1
        ), queued AS (
            INSERT INTO %6$s (%7$s, seq, priority)
            SELECT %8$s, nextval('rowembed.change_seq'), 1
            FROM chunk AS c LEFT JOIN %9$s AS e ON %10$s
            WHERE btrim(c.text) <> ''
              AND e.text_hash IS DISTINCT FROM decode(md5(c.text), 'hex')
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM chunk), (SELECT count(*) FROM queued),
               (SELECT jsonb_build_object(%11$s) FROM chunk AS c ORDER BY %12$s LIMIT 1)
        $q$,
        keys, v.separator,
        (SELECT string_agg(format('s.%I::text', c), ', ' ORDER BY o)
           FROM unnest(v.text_columns) WITH ORDINALITY AS u(c, o)),
        rowembed._qualified(v.source), after_cursor, rowembed._qualified(v.queue_table),
        rowembed._columns(v.pk_columns), rowembed._columns(v.pk_columns, 'c'),
        rowembed._qualified(v.destination), rowembed._equal(v.pk_columns, 'e', 'c'),
        (SELECT string_agg(format('%L, c.%I', c, c), ', ' ORDER BY o)
           FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)),
        (SELECT string_agg(format('c.%I DESC', c), ', ' ORDER BY o)
           FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)))
        INTO n_scanned, n_queued, next_key USING chunk_size, b.last_key;
    UPDATE rowembed.backfill AS z
       SET scanned = z.scanned + n_scanned, queued = z.queued + n_queued,
           last_key = coalesce(next_key, z.last_key), updated_at = now(),
           state = CASE WHEN n_scanned < chunk_size THEN 'done' ELSE 'running' END
     WHERE z.vectorizer_id = v.id;
    IF n_queued > 0 THEN
        PERFORM pg_notify('rowembed', v.id || ' backfill');  -- no hurry: behind live changes
    END IF;
    RETURN n_queued;
END
$body$;

-- Parked (failed) entries back into the queue, with fresh attempts.
CREATE OR REPLACE FUNCTION rowembed.retry_failed(name text) RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    retried bigint;
BEGIN
    v := rowembed._vectorizer_named(retry_failed.name);
    EXECUTE format('UPDATE %s SET failed_at = NULL, attempts = 0, lease_until = NULL,'
                   ' claimed_by = NULL WHERE failed_at IS NOT NULL',
                   rowembed._qualified(v.queue_table));
    GET DIAGNOSTICS retried = ROW_COUNT;
    PERFORM pg_notify('rowembed', v.id::text);
    RETURN retried;
END
$body$;

-- Entries whose last attempt failed: parked ones (failed_at set) and those backing off.
CREATE OR REPLACE FUNCTION rowembed.errors()
RETURNS TABLE (vectorizer text, key jsonb, attempts int, last_error text, parked boolean,
               failed_at timestamptz, retry_after timestamptz)
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    FOR v IN SELECT * FROM rowembed.vectorizer AS z ORDER BY z.id LOOP
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, jsonb_build_object(%s), attempts, last_error,'
            ' failed_at IS NOT NULL, failed_at, CASE WHEN failed_at IS NULL THEN lease_until END'
            ' FROM %s WHERE last_error IS NOT NULL ORDER BY seq',
            v.name,
            (SELECT string_agg(format('%L, %I', c, c), ', ' ORDER BY o)
               FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)),
            rowembed._qualified(v.queue_table));
    END LOOP;
END
$body$;

CREATE OR REPLACE VIEW rowembed.vectorizer_errors AS SELECT * FROM rowembed.errors();

-- Exactly what a worker role needs for one vectorizer (or all): read the key and
-- text columns, write the embeddings, use the queue, log batches.
CREATE OR REPLACE FUNCTION rowembed.grant_worker(role name, vectorizer text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA rowembed TO %I', role);
    EXECUTE format('GRANT SELECT ON rowembed.vectorizer TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON rowembed.batch_stats TO %I', role);
    -- The dispatcher (same role) steps backfills.
    EXECUTE format('GRANT SELECT, UPDATE ON rowembed.backfill TO %I', role);
    EXECUTE format('GRANT USAGE ON SEQUENCE rowembed.change_seq TO %I', role);
    FOR v IN SELECT * FROM rowembed.vectorizer AS z
             WHERE grant_worker.vectorizer IS NULL OR z.name = grant_worker.vectorizer LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
            (SELECT c.relnamespace::regnamespace::name FROM pg_class c WHERE c.oid = v.source), role);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
            (SELECT c.relnamespace::regnamespace::name FROM pg_class c WHERE c.oid = v.destination),
            role);
        EXECUTE format('GRANT SELECT (%s) ON %s TO %I',
            rowembed._columns(v.pk_columns || v.text_columns), v.source, role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s, %s TO %I',
            rowembed._qualified(v.destination), rowembed._qualified(v.queue_table), role);
    END LOOP;
END
$body$;

-- ---------------------------------------------------------------------------
-- Search
-- ---------------------------------------------------------------------------

-- The vectorizer of a table (by name when the table has several).
CREATE OR REPLACE FUNCTION rowembed._vectorizer_for(row_type regtype, vectorizer text)
RETURNS rowembed.vectorizer
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    rel regclass;
    found_ rowembed.vectorizer;
    names text;
BEGIN
    SELECT t.typrelid::regclass INTO rel FROM pg_type t WHERE t.oid = row_type AND t.typrelid <> 0;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'rowembed: % is not a table row type', row_type
            USING HINT = 'Pass a row of the table, or NULL::your_table.';
    END IF;
    IF vectorizer IS NOT NULL THEN
        SELECT * INTO found_ FROM rowembed.vectorizer AS z WHERE z.name = vectorizer AND z.source = rel;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'rowembed: table % has no vectorizer named %', rel, vectorizer;
        END IF;
        RETURN found_;
    END IF;
    SELECT string_agg(z.name, ', ') INTO names FROM rowembed.vectorizer AS z WHERE z.source = rel;
    IF names IS NULL THEN
        RAISE EXCEPTION 'rowembed: table % has no vectorizer', rel
            USING HINT = 'Create one with rowembed.create_vectorizer().';
    END IF;
    SELECT * INTO found_ FROM rowembed.vectorizer AS z WHERE z.source = rel;
    IF (SELECT count(*) FROM rowembed.vectorizer AS z WHERE z.source = rel) > 1 THEN
        RAISE EXCEPTION 'rowembed: table % has several vectorizers (%)', rel, names
            USING HINT = 'Pass vectorizer => ''name''.';
    END IF;
    RETURN found_;
END
$body$;

-- The threshold in force: the call's, else the session's rowembed.min_similarity,
-- else the vectorizer's default.
CREATE OR REPLACE FUNCTION rowembed._threshold(v rowembed.vectorizer, min_similarity float8)
RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(min_similarity,
                    nullif(current_setting('rowembed.min_similarity', true), '')::float8,
                    v.min_similarity)
$$;

-- The cosine distance of column `col` to the query vector $1, in the column's type.
CREATE OR REPLACE FUNCTION rowembed._distance_sql(v rowembed.vectorizer, col text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('(%s <=> $1::%s(%s))', col, v.storage, v.dimensions)
$$;

-- Candidates the binary-quantized index returns per result row, re-scored
-- exactly: the session's rowembed.rescore_factor, else 10.
CREATE OR REPLACE FUNCTION rowembed._candidates(v rowembed.vectorizer, k int) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN v.index_method = 'hnsw_binary'
        THEN k * greatest(1, coalesce(
            nullif(current_setting('rowembed.rescore_factor', true), '')::int, 10))
        ELSE k END
$$;

-- The query behind search() and similar(). Parameters: $1 query vector, $2 k,
-- $3 threshold, $4 a row to leave out (similar()), $5 a jsonb filter on the source
-- row (to_jsonb(row) @> filter), $6 candidates (k, or more for re-scoring). The
-- index answers the inner ORDER BY ... LIMIT, joined to the source so a filter is
-- applied while the index is walked (with pgvector's iterative scan, a selective
-- filter still yields k rows); with a binary-quantized index the inner query
-- orders by hamming distance and the outer one re-scores exactly. The threshold
-- filters the result.
CREATE OR REPLACE FUNCTION rowembed._search_sql(v rowembed.vectorizer, exclude_row boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format(
        'SELECT h.similarity, h.s FROM ('
        ' SELECT 1 - %1$s AS similarity, s FROM %2$s AS e'
        ' JOIN %3$s AS s ON %4$s'
        ' WHERE ($5 IS NULL OR to_jsonb(s) @> $5) %5$s'
        ' ORDER BY %6$s LIMIT $6) AS h'
        ' WHERE h.similarity >= $3'
        ' ORDER BY h.similarity DESC LIMIT $2',
        rowembed._distance_sql(v, format('e.%I', v.embedding_column)),
        rowembed._qualified(v.destination), rowembed._qualified(v.source),
        rowembed._equal(v.pk_columns, 'e', 's'),
        CASE WHEN exclude_row THEN format('AND (%s) IS DISTINCT FROM (%s)',
            rowembed._columns(v.pk_columns, 's'),
            rowembed._columns(v.pk_columns, '($4)'))
        ELSE '' END,
        CASE WHEN v.index_method = 'hnsw_binary' AND v.index_state = 'built'
            THEN format('binary_quantize(e.%1$I)::bit(%2$s) <~> binary_quantize($1)::bit(%2$s)',
                        v.embedding_column, v.dimensions)
            ELSE rowembed._distance_sql(v, format('e.%I', v.embedding_column)) END)
$$;

-- pgvector's setting; NULL-safe before the extension's library is loaded in a session.
CREATE OR REPLACE FUNCTION rowembed._ef_search() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('hnsw.ef_search', true), '40')
$$;

-- HNSW returns at most hnsw.ef_search rows; raise it for large k, for this call only.
CREATE OR REPLACE FUNCTION rowembed._ef_search_for(k int) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT greatest(least(k + 1, 1000), rowembed._ef_search()::int)::text
$$;

-- pgvector's settings for one search: ef_search raised for large k, and an
-- iterative scan when a filter may discard candidates. Returns the old values.
CREATE OR REPLACE FUNCTION rowembed._search_settings(k int, filtered boolean) RETURNS text[]
LANGUAGE plpgsql AS $body$
DECLARE
    old text[] := ARRAY[rowembed._ef_search(),
                        CASE WHEN filtered THEN current_setting('hnsw.iterative_scan') END];
BEGIN
    PERFORM set_config('hnsw.ef_search', rowembed._ef_search_for(k), true);
    IF filtered THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    END IF;
    RETURN old;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed._restore_search_settings(old text[]) RETURNS void
LANGUAGE plpgsql AS $body$
BEGIN
    PERFORM set_config('hnsw.ef_search', old[1], true);
    IF old[2] IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', old[2], true);
    END IF;
END
$body$;

-- Rows of a table most similar to a query vector, best first, at or above the
-- threshold. Usage: SELECT similarity, (item).* FROM rowembed.search(NULL::docs, $1, 10)
CREATE OR REPLACE FUNCTION rowembed.search(
    source anyelement,
    query vector,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (similarity float8, item anyelement)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    candidates int := rowembed._candidates(v, k);
    old text[];
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'rowembed: k must be at least 1';
    END IF;
    old := rowembed._search_settings(candidates, filter IS NOT NULL);
    RETURN QUERY EXECUTE rowembed._search_sql(v, false)
        USING query, k, rowembed._threshold(v, min_similarity), NULL::text, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- Rows most similar to a given row (by its stored embedding), the row itself left out.
-- Usage: SELECT s.similarity, (s.similar_item).* FROM docs d, rowembed.similar(d, 5) s
--        WHERE d.id = 42
CREATE OR REPLACE FUNCTION rowembed.similar(
    item anyelement,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (similarity float8, similar_item anyelement)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(item), vectorizer);
    candidates int := rowembed._candidates(v, k);
    old text[];
    query vector;
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'rowembed: k must be at least 1';
    END IF;
    EXECUTE format('SELECT %I::vector FROM %s WHERE (%s) = (%s)',
        v.embedding_column, rowembed._qualified(v.destination), rowembed._columns(v.pk_columns),
        rowembed._columns(v.pk_columns, '($1)'))
        INTO query USING item;
    IF query IS NULL THEN
        RETURN;  -- the row has no embedding (yet, or its text is empty)
    END IF;
    -- Leaving the row out is a filter.
    old := rowembed._search_settings(candidates, true);
    RETURN QUERY EXECUTE rowembed._search_sql(v, true)
        USING query, k, rowembed._threshold(v, min_similarity), item, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- Threshold calibration. bge similarities cluster in about [0.6, 1], so a fixed
-- threshold means little: compare, on your own data, the similarity of each
-- query's nearest rows with that of random rows. Queries are vectors (embed them
-- with the query instruction: `rowembed calibrate` does); without them, a sample of
-- the table's own rows stands in (each leaving itself out). Rows: 'top1', 'topk'
-- (the k nearest) and 'random' (unrelated pairs); p99 of 'random' is a
-- reasonable floor for min_similarity.
CREATE OR REPLACE FUNCTION rowembed.similarity_profile(
    name text,
    queries vector[] DEFAULT NULL,
    sample int DEFAULT 100,
    k int DEFAULT 10)
RETURNS TABLE (measure text, n bigint, p10 float8, p50 float8, p90 float8, p99 float8)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    dest text;
    own_rows boolean := queries IS NULL;
    q vector;
    sims float8[];
    top1 float8[] := '{}';
    topk float8[] := '{}';
    background float8[];
    old text[];
BEGIN
    v := rowembed._vectorizer_named(similarity_profile.name);
    dest := rowembed._qualified(v.destination);
    IF own_rows THEN
        EXECUTE format('SELECT array_agg(%I::vector) FROM (SELECT %I FROM %s'
                       ' ORDER BY random() LIMIT $1) r', v.embedding_column, v.embedding_column, dest)
            INTO queries USING sample;
    END IF;
    old := rowembed._search_settings(k + 1, false);
    FOREACH q IN ARRAY coalesce(queries, '{}') LOOP
        EXECUTE format('SELECT array_agg(s ORDER BY s DESC) FROM (SELECT 1 - %1$s AS s'
                       ' FROM %2$s ORDER BY %1$s LIMIT $2) t',
                       rowembed._distance_sql(v, quote_ident(v.embedding_column)), dest)
            INTO sims USING q, k + own_rows::int;
        IF own_rows THEN
            sims := sims[2:];  -- the row itself
        END IF;
        top1 := top1 || sims[1];
        topk := topk || sims;
    END LOOP;
    PERFORM rowembed._restore_search_settings(old);
    EXECUTE format('SELECT array_agg(1 - (r.%1$I::vector <=> qv)) FROM unnest($1) AS qv,'
                   ' (SELECT %1$I FROM %2$s ORDER BY random() LIMIT $2) AS r',
                   v.embedding_column, dest)
        INTO background USING queries, sample;
    RETURN QUERY
    SELECT m.measure, count(x), percentile_cont(0.1) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY x)
    FROM (VALUES (1, 'top1', top1), (2, 'topk', topk), (3, 'random', background))
         AS m(o, measure, xs)
    CROSS JOIN LATERAL unnest(coalesce(m.xs, '{}')) AS x
    GROUP BY m.o, m.measure ORDER BY m.o;
END
$body$;

-- The plan search() runs, to check that the HNSW index answers it.
CREATE OR REPLACE FUNCTION rowembed.explain_search(
    source anyelement,
    query vector,
    k int DEFAULT 10,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    candidates int := rowembed._candidates(v, k);
    old text[] := rowembed._search_settings(candidates, filter IS NOT NULL);
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (COSTS OFF) ' || rowembed._search_sql(v, false)
        USING query, k, rowembed._threshold(v, NULL), NULL::text, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- ---------------------------------------------------------------------------
-- Pin search_path on every function above, with pgvector's schema (wherever the
-- extension was installed) after pg_catalog so built-ins cannot be shadowed.
-- ---------------------------------------------------------------------------
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
