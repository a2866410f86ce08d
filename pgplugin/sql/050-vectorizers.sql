-- Vectorizers: create, drop, settings, and the grants a worker role needs.

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

-- Why a vectorizer cannot work now, or NULL: its source, queue or destination
-- is gone, a key or embedded column was renamed or dropped, the source joined a
-- partition or inheritance hierarchy, a change trigger is missing. status()
-- shows it; the sweep, backfills and workers skip such a vectorizer, and the
-- others go on.
CREATE OR REPLACE FUNCTION rowembed._problem(v rowembed.vectorizer) RETURNS text
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    missing text;
BEGIN
    IF rowembed._qualified(v.source) IS NULL THEN
        RETURN 'its source table was dropped';
    ELSIF rowembed._qualified(v.queue_table) IS NULL THEN
        RETURN 'its queue table was dropped';
    ELSIF rowembed._change_log(v.id) IS NULL THEN
        RETURN 'its change log was dropped (rowembed migrate recreates it and its triggers)';
    ELSIF rowembed._qualified(v.destination) IS NULL THEN
        RETURN 'its destination table was dropped';
    END IF;
    SELECT u.c INTO missing FROM unnest(v.pk_columns || v.text_columns) AS u(c)
     WHERE NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = v.source
                          AND a.attname = u.c AND a.attnum > 0 AND NOT a.attisdropped)
     LIMIT 1;
    IF FOUND THEN
        RETURN format('column %I of %s was renamed or dropped', missing, v.source);
    END IF;
    -- rowembed's own tables, altered by hand: every loop that reads them would fail.
    SELECT format('column %I of %s', u.c, u.rel) INTO missing
      FROM (SELECT v.queue_table, unnest(v.pk_columns || ARRAY['seq', 'priority', 'attempts',
                   'lease_until', 'claimed_by', 'last_error', 'failed_at', 'enqueued_at']::name[])
            UNION ALL
            SELECT v.destination, unnest(v.pk_columns || ARRAY[v.embedding_column, 'text_hash',
                                                                'embedded_at']::name[])) AS u(rel, c)
     WHERE NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = u.rel
                          AND a.attname = u.c AND a.attnum > 0 AND NOT a.attisdropped)
     LIMIT 1;
    IF FOUND THEN
        RETURN format('%s was renamed or dropped: rename it back, or drop and recreate the'
                      ' vectorizer', missing);
    END IF;
    IF (SELECT c.relispartition FROM pg_class AS c WHERE c.oid = v.source)
       OR EXISTS (SELECT FROM pg_inherits AS i WHERE v.source IN (i.inhrelid, i.inhparent)) THEN
        RETURN format('%s became a partition or joined an inheritance hierarchy: rows written'
                      ' through a parent or kept in a child are not captured', v.source);
    END IF;
    SELECT e.t INTO missing FROM unnest(ARRAY['insert', 'update', 'delete', 'truncate']) AS e(t)
     WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = v.source
                          AND g.tgname = 'rowembed_' || v.id || '_' || e.t)
     LIMIT 1;
    IF FOUND THEN
        RETURN format('its %s trigger is missing (rowembed migrate recreates it)', missing);
    END IF;
    RETURN NULL;
END
$body$;

-- The vectorizers the current role works with: those whose queue it may read
-- (a worker role holds only its own), and any whose queue is gone (broken).
CREATE OR REPLACE FUNCTION rowembed._visible_vectorizers() RETURNS SETOF rowembed.vectorizer
LANGUAGE sql STABLE AS $$
    SELECT z.* FROM rowembed.vectorizer AS z
     WHERE coalesce(has_table_privilege(z.queue_table, 'SELECT'), true)
     ORDER BY z.id
$$;

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
    defer_index_above bigint DEFAULT 100000,
    passage_instruction text DEFAULT NULL,
    chunking text DEFAULT 'none',
    chunk_tokens int DEFAULT NULL,
    chunk_overlap int DEFAULT NULL,
    max_chunks int DEFAULT 100
) RETURNS int
LANGUAGE plpgsql AS $body$
DECLARE
    -- Column names rowembed adds beside the key in its own tables.
    reserved name[] := ARRAY['seq', 'priority', 'attempts', 'lease_until',
        'claimed_by', 'last_error', 'failed_at', 'enqueued_at', 'text_hash', 'embedded_at'];
    -- And beside the key of a chunked destination.
    chunk_columns constant name[] := ARRAY['chunk', 'chunk_start', 'chunk_end'];
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
    IF src_kind = 'p' OR (SELECT c.relispartition FROM pg_class c
                            WHERE c.oid = create_vectorizer.source) THEN
        RAISE EXCEPTION 'rowembed: % is partitioned or a partition', create_vectorizer.source
            USING HINT = 'Changes made through a partitioned table are not all captured:'
                         ' vectorize a plain table.';
    ELSIF src_kind <> 'r' THEN
        RAISE EXCEPTION 'rowembed: % is not a table', create_vectorizer.source;
    END IF;
    -- Its trigger functions will run as the creator (the queue's owner), over
    -- the creator's tables: only the source's owner may create them.
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c
                                      WHERE c.oid = create_vectorizer.source), 'USAGE') THEN
        RAISE EXCEPTION 'rowembed: only the owner of % (or a member of its role) may vectorize it',
            create_vectorizer.source;
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
    -- Columns are embedded by their text form (numbers, dates, json as written);
    -- bytea's is its hex escape, never text a model should read.
    SELECT c INTO missing FROM unnest(create_vectorizer.text_columns) AS u(c)
      JOIN pg_attribute AS a ON a.attrelid = create_vectorizer.source AND a.attname = u.c
     WHERE a.atttypid = 'bytea'::regtype
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rowembed: column % of % is bytea: it has no text to embed',
            quote_ident(missing), create_vectorizer.source
            USING HINT = 'Embed a text column (or a generated column holding its text).';
    END IF;

    IF create_vectorizer.chunking IS NULL
       OR create_vectorizer.chunking NOT IN ('none', 'tokens') THEN
        RAISE EXCEPTION 'rowembed: chunking must be none or tokens, not %',
            coalesce(quote_literal(create_vectorizer.chunking), 'NULL');
    ELSIF create_vectorizer.chunking = 'tokens' THEN
        reserved := reserved || chunk_columns;
        IF create_vectorizer.chunk_tokens < 8 THEN
            RAISE EXCEPTION 'rowembed: chunk_tokens must be at least 8';
        ELSIF create_vectorizer.chunk_overlap < 0
              OR create_vectorizer.chunk_overlap >= create_vectorizer.chunk_tokens / 2 THEN
            RAISE EXCEPTION 'rowembed: chunk_overlap must be at least 0 and under half of chunk_tokens';
        END IF;
    END IF;
    IF create_vectorizer.max_chunks IS NULL OR create_vectorizer.max_chunks < 1
       OR create_vectorizer.max_chunks > 1000 THEN
        -- Bounded: a worker holds a row's chunks (and their vectors) in memory.
        RAISE EXCEPTION 'rowembed: max_chunks must be from 1 to 1000, not %',
            coalesce(create_vectorizer.max_chunks::text, 'NULL');
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
    -- The queue lives beside the destination (the vectorizer's home): the creator
    -- may create there, and no role but rowembed's owner creates in rowembed.
    queue := format('%I.%I', dest_schema, 'rowembed_queue_' || new_id);
    keys := rowembed._columns(pk_cols);
    SELECT string_agg(format('%I %s', c, t), ', ' ORDER BY o) INTO key_defs
      FROM unnest(pk_cols, pk_types) WITH ORDINALITY AS u(c, t, o);

    -- The durable queue: one entry per changed row, whatever the number of changes.
    PERFORM rowembed._create_queue(queue, key_defs, keys);

    -- Chunked: one row per chunk, its characters in the embedded text
    -- (embedded_text() without the passage instruction); text_hash is the row's.
    EXECUTE format(
        'CREATE TABLE %I.%I (%s, %s %I @extschema:vector@.%s(%s) NOT NULL, text_hash bytea NOT NULL,'
        ' embedded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s%s))',
        dest_schema, dest_table, key_defs,
        CASE WHEN create_vectorizer.chunking = 'tokens'
             THEN 'chunk int NOT NULL, chunk_start int NOT NULL, chunk_end int NOT NULL,'
             ELSE '' END,
        create_vectorizer.embedding_column,
        create_vectorizer.storage, create_vectorizer.dimensions, keys,
        CASE WHEN create_vectorizer.chunking = 'tokens' THEN ', chunk' ELSE '' END);

    PERFORM rowembed._catalog_insert(jsonb_build_object(
        'id', new_id,
        'name', coalesce(create_vectorizer.name, src_table),
        'source', create_vectorizer.source::oid, 'pk_columns', pk_cols,
        'text_columns', create_vectorizer.text_columns,
        'separator', create_vectorizer.separator, 'model', create_vectorizer.model,
        'dimensions', create_vectorizer.dimensions,
        'destination', format('%I.%I', dest_schema, dest_table)::regclass::oid,
        'embedding_column', create_vectorizer.embedding_column,
        'queue_table', queue::regclass::oid,
        'min_similarity', coalesce(create_vectorizer.min_similarity,
                                   rowembed.default_min_similarity(create_vectorizer.model)),
        'query_instruction', coalesce(create_vectorizer.query_instruction,
                                      rowembed.default_query_instruction(create_vectorizer.model)),
        'rerank_model', create_vectorizer.rerank_model,
        'max_attempts', create_vectorizer.max_attempts,
        'storage', create_vectorizer.storage, 'index_method', create_vectorizer.index_method,
        'index_state', 'built', 'defer_index_above', create_vectorizer.defer_index_above,
        'passage_instruction', coalesce(create_vectorizer.passage_instruction,
                                        rowembed.default_passage_instruction(create_vectorizer.model)),
        'chunking', create_vectorizer.chunking, 'chunk_tokens', create_vectorizer.chunk_tokens,
        'chunk_overlap', create_vectorizer.chunk_overlap,
        'max_chunks', create_vectorizer.max_chunks));

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

-- Quiet: "... does not exist, skipping" of what a half-made vectorizer lacks is noise.
CREATE OR REPLACE FUNCTION rowembed.drop_vectorizer(name text, drop_destination boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SET client_min_messages = warning AS $body$
DECLARE
    v rowembed.vectorizer;
    event text;
BEGIN
    v := rowembed._vectorizer_named(drop_vectorizer.name);
    IF (rowembed._replacement_of(v)).id IS NOT NULL THEN  -- a rebuild in progress goes first
        PERFORM rowembed.drop_vectorizer((rowembed._replacement_of(v)).name);
    END IF;
    FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        IF rowembed._qualified(v.source) IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                           'rowembed_' || v.id || '_' || event, v.source);
        END IF;
    END LOOP;
    FOREACH event IN ARRAY ARRAY['inserted', 'updated', 'deleted', 'truncated'] LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %s()', rowembed._capture_function(v, event));
    END LOOP;
    PERFORM rowembed.disable_text_search(v.name);
    EXECUTE format('DROP TABLE IF EXISTS %s, %s', rowembed._qualified(v.queue_table),
                   rowembed._change_log_name(v));
    IF drop_destination AND rowembed._qualified(v.destination) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %s', rowembed._qualified(v.destination));
    END IF;
    PERFORM rowembed._catalog_delete(v.id);
END
$body$;

CREATE OR REPLACE FUNCTION rowembed.set_min_similarity(name text, min_similarity float8)
RETURNS void
LANGUAGE sql AS $$
    SELECT rowembed._catalog_set(z.id, jsonb_build_object('min_similarity',
                                                          set_min_similarity.min_similarity))
      FROM rowembed.vectorizer AS z WHERE z.name = set_min_similarity.name
$$;

-- USAGE on the schemas of a vectorizer's source and destination.
CREATE OR REPLACE FUNCTION rowembed._grant_schemas(v rowembed.vectorizer, role name)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    schema name;
BEGIN
    FOR schema IN SELECT DISTINCT n.nspname FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.oid IN (v.source, v.destination) LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema, role);
    END LOOP;
END
$body$;

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
    -- The dispatcher (same role) steps backfills; batches are logged.
    EXECUTE format('GRANT SELECT ON rowembed.backfill, rowembed.batch_stats TO %I', role);
    PERFORM rowembed._grant_catalog_writers(role, creator => false);
    EXECUTE format('GRANT USAGE ON SEQUENCE rowembed.change_seq TO %I', role);
    -- Answering SQL callers' query texts and rerank requests (search_text).
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON rowembed.query_request TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON rowembed.query_cache TO %I', role);
    EXECUTE format('GRANT SELECT, UPDATE ON rowembed.rerank_request TO %I', role);
    -- Fine-tuning jobs (rowembed.finetune), on a worker of the train queue.
    EXECUTE format('GRANT SELECT, UPDATE ON rowembed.training_job TO %I', role);
    EXECUTE format('GRANT SELECT ON rowembed.training_pair TO %I', role);
    FOR v IN SELECT * FROM rowembed.vectorizer AS z
             WHERE grant_worker.vectorizer IS NULL OR z.name = grant_worker.vectorizer LOOP
        PERFORM rowembed._grant_schemas(v, role);
        EXECUTE format('GRANT SELECT (%s) ON %s TO %I',
            rowembed._columns(v.pk_columns || v.text_columns), v.source, role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I',
            concat_ws(', ', rowembed._qualified(v.destination), rowembed._qualified(v.queue_table),
                      rowembed._change_log(v.id)), role);
    END LOOP;
END
$body$;

-- What a role needs to create and manage vectorizers over tables it owns (it
-- also needs CREATE on the destination's schema, where the vectorizer's queue,
-- change log and generated functions live too): rowembed's functions write
-- the catalog for it, over its own tables only. Never CREATE on schema rowembed: a role
-- that may create there could add an overload rowembed's own code would call.
CREATE OR REPLACE FUNCTION rowembed.grant_creator(role name) RETURNS void
LANGUAGE plpgsql AS $body$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA rowembed TO %I', role);
    EXECUTE format('GRANT SELECT ON rowembed.vectorizer, rowembed.backfill, rowembed.model_family,'
                   ' rowembed.batch_stats, rowembed.training_job, rowembed.training_pair TO %I',
                   role);
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, rowembed.change_seq TO %I',
                   pg_get_serial_sequence('rowembed.vectorizer', 'id'), role);
    PERFORM rowembed._grant_catalog_writers(role, creator => true);
    PERFORM rowembed._grant_query_functions(role);
END
$body$;

-- What a searcher role needs beyond SELECT on the source table (which its owner
-- grants): to read the vectorizer's embeddings and the catalog, for one
-- vectorizer (or all). search(), similar() and embedded_text() run as the caller.
CREATE OR REPLACE FUNCTION rowembed.grant_searcher(role name, vectorizer text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA rowembed TO %I', role);
    EXECUTE format('GRANT SELECT ON rowembed.vectorizer TO %I', role);
    -- search_text(), embed_query(), rerank(): query vectors and scores from the workers.
    PERFORM rowembed._grant_query_functions(role);
    FOR v IN SELECT * FROM rowembed.vectorizer AS z
             WHERE grant_searcher.vectorizer IS NULL OR z.name = grant_searcher.vectorizer LOOP
        PERFORM rowembed._grant_schemas(v, role);
        EXECUTE format('GRANT SELECT ON %s TO %I', rowembed._qualified(v.destination), role);
    END LOOP;
END
$body$;
