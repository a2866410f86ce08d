-- The vector index: storage and index choices, deferred builds for bulk loads.

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
-- Named by the vectorizer's id: a model change's switch renames its table, and
-- the next replacement's index must not find that name taken.
CREATE OR REPLACE FUNCTION rowembed._index_sql(vectorizer_id int, online boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON %s USING hnsw (%s)',
        CASE WHEN online THEN 'CONCURRENTLY' ELSE '' END,
        'rowembed_' || v.id || '_vector_idx',
        rowembed._qualified(v.destination),
        CASE v.index_method
            WHEN 'hnsw' THEN format('%I @extschema:vector@.%s_cosine_ops', v.embedding_column, v.storage)
            ELSE format('(@extschema:vector@.binary_quantize(%I)::bit(%s)) @extschema:vector@.bit_hamming_ops',
                        v.embedding_column, v.dimensions) END)
      FROM rowembed.vectorizer AS v
     WHERE v.id = vectorizer_id AND v.index_method <> 'none'
$$;

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
    PERFORM rowembed._catalog_set(v.id, '{"index_state": "deferred"}');
END
$body$;

-- Whether vectorizer `v` lacks its vector index: deferred, or built once and
-- dropped since (by hand, or by a failed build).
CREATE OR REPLACE FUNCTION rowembed._index_wanted(v rowembed.vectorizer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT v.index_method <> 'none'
       AND (v.index_state = 'deferred' OR rowembed._vector_index(v) IS NULL)
$$;

-- The CREATE INDEX CONCURRENTLY statement of an index deferred or missing (NULL
-- when the index is there or there is none). Run it outside a transaction
-- block, then call rowembed.index_built(name).
CREATE OR REPLACE FUNCTION rowembed.index_sql(name text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT rowembed._index_sql(v.id, true) FROM rowembed.vectorizer AS v
     WHERE v.name = index_sql.name AND rowembed._index_wanted(v)
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
    PERFORM rowembed._catalog_set(v.id, '{"index_state": "built", "index_error": null}');
    RETURN true;
END
$body$;

-- Records why building a deferred index failed, for status().
CREATE OR REPLACE FUNCTION rowembed.index_failed(name text, error text) RETURNS void
LANGUAGE sql AS $$
    SELECT rowembed._catalog_set(z.id, jsonb_build_object('index_error', index_failed.error))
      FROM rowembed.vectorizer AS z
     WHERE z.name = index_failed.name AND z.index_state = 'deferred'
$$;

-- Deferred or missing indexes whose backlog has drained (no backfill running, no backfill
-- entry left in the queue) and that the current role may build (it owns the
-- destination and the vectorizer, whose result it records) and no other
-- session is building: what the dispatcher builds.
CREATE OR REPLACE FUNCTION rowembed.indexes_to_build() RETURNS SETOF text
LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    FOR v IN
        SELECT z.* FROM rowembed.vectorizer AS z JOIN pg_class AS c ON c.oid = z.destination
         WHERE rowembed._index_wanted(z) AND rowembed._problem(z) IS NULL
           AND pg_has_role(c.relowner, 'USAGE')
           AND pg_has_role(z.owner, 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM rowembed.backfill AS b
                            WHERE b.vectorizer_id = z.id AND b.state = 'running')
           AND z.id NOT IN (SELECT rowembed._building())
         ORDER BY z.id
    LOOP
        BEGIN
            IF rowembed.backfill_backlog(v.id, 1) = 0 THEN
                RETURN NEXT v.name;
            END IF;
        EXCEPTION WHEN OTHERS THEN  -- its queue locked, altered or unreadable: the next sweep
            NULL;
        END;
    END LOOP;
END
$body$;

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
