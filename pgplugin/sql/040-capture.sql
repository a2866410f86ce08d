-- Change capture: per-vectorizer trigger functions, generated from the catalog.

-- The generated function of vectorizer `v` for `event` (inserted, updated,
-- deleted, truncated, document), in the vectorizer's home schema: its creator
-- owns it, and no role but rowembed's owner creates in schema rowembed.
CREATE OR REPLACE FUNCTION rowembed._capture_function(v rowembed.vectorizer, event text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('%I.%I', v.home, 'rowembed_vz_' || v.id || '_' || event)
$$;

-- (Re)creates the trigger functions and triggers of one vectorizer. Called by
-- create_vectorizer and again on every migrate, so trigger fixes ship on upgrade.
-- The functions are SECURITY DEFINER, owned by the queue's owner, because the
-- application roles that write the source table must not need any privilege on
-- rowembed's queue or embeddings; so
-- no role may attach them elsewhere: EXECUTE is revoked from PUBLIC (a trigger's
-- function is checked at CREATE TRIGGER, not when it fires), and each refuses to
-- fire for any table but its source.
CREATE OR REPLACE FUNCTION rowembed._install_triggers(vectorizer_id int) RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    log text;
    queue text;
    dest text;
    keys text;
    upsert text;
    old_key text;
    new_key text;
    watched text;
    live_priority smallint;
    guard text;
    event text;
BEGIN
    v := rowembed._vectorizer_of(vectorizer_id);
    IF rowembed._qualified(v.source) IS NULL THEN
        RETURN;  -- the source table was dropped; nothing to capture
    END IF;
    PERFORM rowembed._create_change_log(v);
    log := rowembed._change_log_name(v);
    queue := rowembed._qualified(v.queue_table);
    dest := rowembed._qualified(v.destination);
    keys := rowembed._columns(v.pk_columns);
    upsert := rowembed._enqueue_change_sql(keys);
    live_priority := rowembed.change_priority();
    SELECT string_agg(format('OLD.%I', c), ', ' ORDER BY o),
           string_agg(format('NEW.%I', c), ', ' ORDER BY o)
      INTO old_key, new_key
      FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    guard := format($g$
            IF TG_RELID <> %s THEN
                RAISE EXCEPTION 'rowembed: %s serves %% only, not %%', %L, TG_RELID::regclass;
            END IF;$g$, v.source::oid, 'rowembed_vz_' || v.id, rowembed._qualified(v.source));

    -- INSERT: one set-based statement per source statement (COPY and bulk inserts),
    -- into the change log (030-queue.sql): no index, no row lock.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN %4$s
            INSERT INTO %2$s (%3$s, seq) SELECT %3$s, nextval('rowembed.change_seq') FROM new_rows;
            RETURN NULL;
        END $fn$ $f$, rowembed._capture_function(v, 'inserted'), log, keys, guard);

    -- UPDATE: fires only when an embedded column or the key changed (see WHEN below).
    -- A text change goes to the change log. A key change moves the embedding to
    -- the new key and queues both keys (in the queue: a claim on the old key is
    -- void at once); the worker then finds the text unchanged and skips the
    -- model. Locks are taken on the queue before the embeddings, in the same
    -- order as the worker.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN %8$s
            IF (%3$s) IS DISTINCT FROM (%4$s) THEN
                -- Both keys are queued: the old one so the worker confirms it is gone
                -- (in a key swap it is not) and any claim on it is voided.
                INSERT INTO %5$s AS q (%6$s, seq, priority)
                VALUES (%3$s, nextval('rowembed.change_seq'), %7$s),
                       (%4$s, nextval('rowembed.change_seq'), %7$s) %9$s;
                -- Every row of the old key (all chunks of a chunked one) moves to
                -- the new key, replacing what was there.
                DELETE FROM %2$s WHERE (%6$s) = (%4$s);
                UPDATE %2$s SET (%6$s) = ROW(%4$s) WHERE (%6$s) = (%3$s);
            ELSE
                INSERT INTO %10$s (%6$s, seq) VALUES (%4$s, nextval('rowembed.change_seq'));
            END IF;
            RETURN NULL;
        END $fn$ $f$, rowembed._capture_function(v, 'updated'), dest, old_key, new_key, queue, keys,
        live_priority, guard, upsert, log);

    -- DELETE: the embedding goes in the same transaction; the queue entry too, which
    -- also voids any claim a worker holds on it (its write then finds nothing to do).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN %6$s
            DELETE FROM %2$s AS q USING old_rows AS o WHERE %4$s;
            DELETE FROM %3$s AS e USING old_rows AS o WHERE %5$s;
            RETURN NULL;
        END $fn$ $f$, rowembed._capture_function(v, 'deleted'), queue, dest,
        rowembed._equal(v.pk_columns, 'q', 'o'), rowembed._equal(v.pk_columns, 'e', 'o'), guard);

    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        BEGIN %4$s
            TRUNCATE %2$s, %3$s, %5$s;
            RETURN NULL;
        END $fn$ $f$, rowembed._capture_function(v, 'truncated'), queue, dest, guard, log);
    FOREACH event IN ARRAY ARRAY['inserted', 'updated', 'deleted', 'truncated'] LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC',
                       rowembed._capture_function(v, event));
        -- They run as the queue's owner (the vectorizer's creator, whom the
        -- catalog's row-level security checked), never as whoever ran migrate.
        EXECUTE format('ALTER FUNCTION %s() OWNER TO %I', rowembed._capture_function(v, event),
                       (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                         WHERE c.oid = v.queue_table));
    END LOOP;

    SELECT string_agg(format('OLD.%I::text', c), ', ' ORDER BY o)
           || ') IS DISTINCT FROM ('
           || string_agg(format('NEW.%I::text', c), ', ' ORDER BY o)
      INTO watched
      FROM unnest(v.text_columns || v.pk_columns) WITH ORDINALITY AS u(c, o);

    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %s'
                   ' REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s()',
                   'rowembed_' || v.id || '_insert', v.source, rowembed._capture_function(v, 'inserted'));
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW'
                   ' WHEN ((%s)) EXECUTE FUNCTION %s()',
                   'rowembed_' || v.id || '_update', v.source, watched,
                   rowembed._capture_function(v, 'updated'));
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %s'
                   ' REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s()',
                   'rowembed_' || v.id || '_delete', v.source, rowembed._capture_function(v, 'deleted'));
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT'
                   ' EXECUTE FUNCTION %s()',
                   'rowembed_' || v.id || '_truncate', v.source,
                   rowembed._capture_function(v, 'truncated'));
END
$body$;
