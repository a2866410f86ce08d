-- What operators read: per-vectorizer status and the errors of failed rows.

-- Per-vectorizer counts: exact for the queue; for destinations of over a million
-- rows, the planner's estimate (an exact count would read the whole table).
-- in_flight: claimed by a live worker; queued: the rest, entries backing off
-- included, and the changes logged and not folded yet (a key logged twice counts twice).
-- On a hot standby, which sees none of the primary's workers, in_flight counts
-- claims whose lease holds (a dead worker's too, until its lease ends).
-- problem: why the vectorizer cannot work (rowembed._problem()), counts NULL when
-- they cannot be read; or why its latest batch could not use the model (its rows
-- wait for it). chunks: a chunked vectorizer's destination rows (embedded
-- counts source rows). rebuild: a model change in progress (alter_vectorizer).
-- training: its latest fine-tuning job (rowembed.finetune), in one line.
-- The vectorizers of the current role only.
CREATE OR REPLACE FUNCTION rowembed.status()
RETURNS TABLE (name text, source regclass, model text, queued bigint, in_flight bigint,
               failed bigint, embedded bigint, rows_per_second float8, eta_seconds float8,
               backfill text, storage text, index text, id int, problem text, chunks bigint,
               rebuild text, training text)
LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS $body$
DECLARE
    v rowembed.vectorizer;
    live int[] := ARRAY(SELECT rowembed.live_workers());
    held text := CASE WHEN pg_is_in_recovery()
                      THEN 'coalesce(lease_until >= now() AND claimed_by IS NOT NULL, false)'
                      ELSE rowembed._held_sql() END;
BEGIN
    FOR v IN SELECT * FROM rowembed._visible_vectorizers() LOOP
        name := v.name;
        source := v.source;
        model := v.model;
        id := v.id;
        storage := format('%s(%s)', v.storage, v.dimensions);
        problem := rowembed._problem(v);
        queued := NULL; in_flight := NULL; failed := NULL; embedded := NULL; chunks := NULL;
        rebuild := NULL;
        training := CASE WHEN has_table_privilege('rowembed.training_job', 'SELECT') THEN (
            SELECT rowembed._training_line(t) FROM rowembed.training_job AS t
             WHERE t.vectorizer_id = v.id ORDER BY t.id DESC LIMIT 1) END;
        rows_per_second := NULL; eta_seconds := NULL; backfill := NULL; index := NULL;
        BEGIN  -- one vectorizer's failure is its problem, not everyone's
            rebuild := CASE
                WHEN v.replaces IS NOT NULL THEN format('replaces %s: %s',
                    (SELECT z.name FROM rowembed.vectorizer AS z WHERE z.id = v.replaces),
                    coalesce(rowembed._switch_blocker(v), 'switching'))
                WHEN (rowembed._replacement_of(v)).id IS NOT NULL
                    THEN format('being rebuilt as %s', (rowembed._replacement_of(v)).name) END;
            EXECUTE format(
                'SELECT count(*) FILTER (WHERE failed_at IS NULL AND NOT held),'
                '       count(*) FILTER (WHERE failed_at IS NULL AND held),'
                '       count(*) FILTER (WHERE failed_at IS NOT NULL)'
                '  FROM (SELECT failed_at, %s AS held FROM %s) AS q',
                held, rowembed._qualified(v.queue_table))
                INTO STRICT queued, in_flight, failed USING live;
            queued := queued + rowembed._logged_changes(v.queue_table);
            embedded := rowembed._row_estimate(v.destination, 1000001);
            IF v.chunking <> 'none' THEN  -- embedded counts rows, chunks their chunks
                chunks := embedded;
                embedded := NULL;
                IF chunks <= 1000000 THEN
                    EXECUTE format('SELECT count(DISTINCT (%s)), count(*) FROM %s',
                                   rowembed._columns(v.pk_columns),
                                   rowembed._qualified(v.destination))
                        INTO embedded, chunks;
                END IF;
            ELSIF embedded <= 1000000 THEN
                EXECUTE format('SELECT count(*) FROM %s', rowembed._qualified(v.destination))
                    INTO embedded;
            END IF;
            index := rowembed._index_status(v);
            -- A model the workers could not use: its latest batch says so.
            problem := coalesce(problem, (SELECT 'its model cannot be used: ' || st.problem
                                            FROM rowembed.batch_stats AS st
                                           WHERE st.vectorizer_id = v.id
                                           ORDER BY st.finished_at DESC LIMIT 1));
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
            -- reltuples is -1 until the table is first analyzed: no estimate then.
            SELECT format('%s: %s rows scanned%s, %s queued', b.state, b.scanned,
                          CASE WHEN c.reltuples >= 0
                               THEN format(' of about %s', c.reltuples::bigint) END, b.queued)
              INTO backfill
              FROM rowembed.backfill AS b JOIN pg_class AS c ON c.oid = v.source
             WHERE b.vectorizer_id = v.id;
        EXCEPTION WHEN OTHERS THEN
            problem := coalesce(problem, SQLERRM);
        END;
        RETURN NEXT;
    END LOOP;
END
$body$;

CREATE OR REPLACE VIEW rowembed.vectorizer_status AS SELECT * FROM rowembed.status();

-- Entries whose last attempt failed: parked ones (failed_at set) and those backing off.
CREATE OR REPLACE FUNCTION rowembed.errors()
RETURNS TABLE (vectorizer text, key jsonb, attempts int, last_error text, parked boolean,
               failed_at timestamptz, retry_after timestamptz)
LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    FOR v IN SELECT * FROM rowembed._visible_vectorizers() LOOP
        CONTINUE WHEN rowembed._qualified(v.queue_table) IS NULL;
        BEGIN  -- a queue altered or locked by its owner: status() says so; the others go on
            RETURN QUERY EXECUTE format(
                'SELECT %L::text, jsonb_build_object(%s), attempts, last_error,'
                ' failed_at IS NOT NULL, failed_at, CASE WHEN failed_at IS NULL THEN lease_until END'
                ' FROM %s WHERE last_error IS NOT NULL ORDER BY seq',
                v.name,
                (SELECT string_agg(format('%L, %I', c, c), ', ' ORDER BY o)
                   FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o)),
                rowembed._qualified(v.queue_table));
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END
$body$;

CREATE OR REPLACE VIEW rowembed.vectorizer_errors AS SELECT * FROM rowembed.errors();
