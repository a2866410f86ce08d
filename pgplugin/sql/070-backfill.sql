-- Backfills: existing rows queued in keyset-ordered chunks, behind live changes.

-- Starts (or restarts) queueing a vectorizer's existing rows whose embedding is
-- missing or stale. A backfill already running is left alone, so two requests
-- do not double the work. Returns 'started' or 'already running'.
CREATE OR REPLACE FUNCTION rowembed.start_backfill(name text) RETURNS text
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    v := rowembed._vectorizer_named(start_backfill.name);
    IF NOT rowembed._backfill_start(v.id) THEN
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
-- worker holds are dropped (live changes are never dropped).
CREATE OR REPLACE FUNCTION rowembed.cancel_backfill(name text) RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    dropped bigint;
BEGIN
    v := rowembed._vectorizer_named(cancel_backfill.name);
    PERFORM rowembed._backfill_cancel(v.id);
    PERFORM rowembed._fold_changes(v, 1000000);  -- a row changed since it was queued stays, live
    EXECUTE format('DELETE FROM %s WHERE priority = $1 AND claimed_by IS NULL'
                   ' AND failed_at IS NULL', rowembed._qualified(v.queue_table))
        USING rowembed.backfill_priority();
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN dropped;
END
$body$;

-- Queues the next chunk of a running backfill: up to chunk_size rows after the
-- cursor, in primary-key order, of which those whose embedding is missing, stale
-- or should not exist (blank text) go to the queue behind live changes; and the
-- embeddings in the same key range whose row is gone (deleted with triggers off:
-- session_replication_role = replica, pg_restore --disable-triggers), which the
-- worker then deletes. One short transaction per chunk; concurrent callers skip a
-- backfill another is stepping. Returns the entries queued.
CREATE OR REPLACE FUNCTION rowembed.backfill_step(vectorizer_id int, chunk_size int)
RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    b rowembed.backfill;
    n_scanned bigint;
    n_queued bigint;
    next_key jsonb;
BEGIN
    b := rowembed._backfill_lock(backfill_step.vectorizer_id);
    IF b.vectorizer_id IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = backfill_step.vectorizer_id;
    PERFORM rowembed._check_sees_every_row(v.source);
    EXECUTE format($q$
        WITH chunk AS (
            SELECT %1$s, %2$s AS text FROM %4$s AS s
            WHERE %5$s ORDER BY %1$s LIMIT $1
        ), last_in_chunk AS (
            SELECT %8$s FROM chunk AS c ORDER BY %12$s LIMIT 1
        ), stale AS (
            SELECT %8$s FROM chunk AS c LEFT JOIN %9$s AS e ON %10$s
            WHERE e.text_hash IS DISTINCT FROM rowembed._text_hash(c.text)
        ), orphans AS (
            SELECT %13$s FROM %9$s AS e
            WHERE %14$s
              AND ((SELECT count(*) FROM chunk) < $1 OR (%13$s) <= (SELECT * FROM last_in_chunk))
              AND NOT EXISTS (SELECT FROM %4$s AS s WHERE %15$s)
        ), queued AS (
            INSERT INTO %6$s (%7$s, seq, priority)
            SELECT *, nextval('rowembed.change_seq'), %3$s
              FROM (SELECT * FROM stale UNION ALL SELECT * FROM orphans) AS k
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM chunk), (SELECT count(*) FROM queued),
               (SELECT jsonb_build_object(%11$s) FROM chunk AS c ORDER BY %12$s LIMIT 1)
        $q$,
        rowembed._columns(v.pk_columns, 's'), rowembed._text_sql(v, 's'),
        rowembed.backfill_priority(), rowembed._qualified(v.source),
        rowembed._after_key(v, 's'), rowembed._qualified(v.queue_table),
        rowembed._columns(v.pk_columns), rowembed._columns(v.pk_columns, 'c'),
        rowembed._qualified(v.destination), rowembed._equal(v.pk_columns, 'e', 'c'),
        (SELECT string_agg(format('%L, c.%I', c, c), ', ' ORDER BY o)
           FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)),
        (SELECT string_agg(format('c.%I DESC', c), ', ' ORDER BY o)
           FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)),
        rowembed._columns(v.pk_columns, 'e'), rowembed._after_key(v, 'e'),
        rowembed._equal(v.pk_columns, 's', 'e'))
        INTO n_scanned, n_queued, next_key USING chunk_size, b.last_key;
    PERFORM rowembed._backfill_record(v.id, n_scanned, n_queued, next_key, n_scanned < chunk_size);
    IF n_queued > 0 THEN
        PERFORM pg_notify('rowembed', v.id || ' backfill');  -- no hurry: behind live changes
    END IF;
    RETURN n_queued;
END
$body$;

-- SQL text: `alias`'s key is after the backfill's cursor ($2: the cursor as jsonb,
-- NULL before the first chunk). The key's types are read from the source's
-- columns (format_type quotes them), never from the catalog's text, which its
-- creator may write.
CREATE OR REPLACE FUNCTION rowembed._after_key(v rowembed.vectorizer, alias text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('($2 IS NULL OR (%s) > (%s))', rowembed._columns(v.pk_columns, alias),
                  string_agg(format('($2->>%L)::%s', u.c, format_type(a.atttypid, a.atttypmod)),
                             ', ' ORDER BY u.o))
      FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)
      JOIN pg_attribute AS a ON a.attrelid = v.source AND a.attname = u.c AND NOT a.attisdropped
$$;

-- Running backfills the current role may step (it may queue rows of the
-- vectorizer), broken vectorizers left out: what the dispatcher tops up.
CREATE OR REPLACE FUNCTION rowembed.backfills_to_step() RETURNS SETOF int
LANGUAGE sql STABLE AS $$
    SELECT v.id FROM rowembed._visible_vectorizers() AS v
      JOIN rowembed.backfill AS b ON b.vectorizer_id = v.id
     WHERE b.state = 'running' AND rowembed._problem(v) IS NULL
       AND has_table_privilege(v.queue_table, 'INSERT')
     ORDER BY v.id
$$;
