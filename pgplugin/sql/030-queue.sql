-- The queue contract: every rule about a vectorizer's queue table is written here
-- once, and the worker, the dispatcher, status() and the backfill call it.
--
-- A queue table holds one entry per changed source row (keyed like the source).
-- `seq` takes a new value from rowembed.change_seq at every change of the row: a
-- worker completes only the entry it claimed if `seq` is still the same, so an
-- older text is never written over a newer one (pgplugin/queue.py writes).
-- `priority`: live changes before backfill. A claim is a lease: `claimed_by` is
-- the claiming worker's token and `lease_until` when the lease ends. A failure
-- sets `last_error` and a back-off (`lease_until`, no token); after max_attempts
-- the entry is parked (`failed_at`) until rowembed.retry_failed().

-- Priorities of queue entries: lower is served first.
CREATE OR REPLACE FUNCTION rowembed.change_priority() RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$ SELECT 0::smallint $$;

CREATE OR REPLACE FUNCTION rowembed.backfill_priority() RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$ SELECT 1::smallint $$;

-- The first key of rowembed's advisory locks (the second is a token or an id):
-- 'worker', held by each worker session; 'index build', held while an index builds;
-- 'training', held by the session of the worker that runs a fine-tuning job.
CREATE OR REPLACE FUNCTION rowembed._lock_class(purpose text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE purpose WHEN 'worker' THEN 7499639 WHEN 'index build' THEN 7499640
                        WHEN 'training' THEN 7499641 END
$$;

-- Second keys of the advisory locks of one class held now in this database.
CREATE OR REPLACE FUNCTION rowembed._lock_holders(purpose text) RETURNS SETOF int
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint::int FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = rowembed._lock_class(purpose)
      AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
$$;

-- Claims alive now. A worker takes a token for each claim and holds the advisory
-- lock ('worker', token) until its batch is written (end_claim) or its session
-- ends; the claimed entries carry the token. When the session dies (SIGKILL, OOM,
-- lost machine, server restart) the locks go with it and the claims are free at
-- once, without waiting for the lease to expire.
CREATE OR REPLACE FUNCTION rowembed.live_workers() RETURNS SETOF int
LANGUAGE sql STABLE AS $$ SELECT rowembed._lock_holders('worker') $$;

-- Vectorizers whose index a session is building now (see pgplugin/indexes.py).
CREATE OR REPLACE FUNCTION rowembed._building() RETURNS SETOF int
LANGUAGE sql STABLE AS $$ SELECT rowembed._lock_holders('index build') $$;

-- A new claim token, held by this session (as the 'worker' advisory lock) until
-- end_claim() or the session's end.
CREATE OR REPLACE FUNCTION rowembed.register_worker() RETURNS int
LANGUAGE plpgsql AS $body$
DECLARE
    token int;
BEGIN
    LOOP
        token := 1 + floor(random() * 2147483646)::int;
        IF pg_try_advisory_lock(rowembed._lock_class('worker'), token) THEN
            RETURN token;
        END IF;
    END LOOP;
END
$body$;

-- Takes ('index build', vectorizer_id) for this session; false if another holds it.
CREATE OR REPLACE FUNCTION rowembed.lock_index_build(vectorizer_id int) RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_try_advisory_lock(rowembed._lock_class('index build'), vectorizer_id)
$$;

CREATE OR REPLACE FUNCTION rowembed.unlock_index_build(vectorizer_id int) RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_advisory_unlock(rowembed._lock_class('index build'), vectorizer_id)
$$;

-- SQL text: the queue entry is claimed by a worker alive now ($1: live_workers()).
CREATE OR REPLACE FUNCTION rowembed._held_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'coalesce(lease_until >= now() AND claimed_by = ANY ($1), false)'
$$;

-- SQL text: the queue entry may be claimed now ($1: live_workers()): never
-- claimed, or its lease or back-off is over, or its worker is gone.
CREATE OR REPLACE FUNCTION rowembed._claimable_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'failed_at IS NULL AND (lease_until IS NULL OR lease_until < now()'
           ' OR (claimed_by IS NOT NULL AND claimed_by <> ALL ($1)))'
$$;

-- Seconds before a failed entry may be claimed again.
CREATE OR REPLACE FUNCTION rowembed._retry_delay(attempts int) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$ SELECT least(600, 2 ^ attempts) $$;

-- Creates a queue table keyed like the source (key_defs: 'id int, ...'; keys: 'id, ...').
CREATE OR REPLACE FUNCTION rowembed._create_queue(queue text, key_defs text, keys text)
RETURNS void
LANGUAGE plpgsql AS $body$
BEGIN
    EXECUTE format(
        'CREATE TABLE %s (%s, seq bigint NOT NULL, priority smallint NOT NULL DEFAULT %s,'
        ' attempts int NOT NULL DEFAULT 0, lease_until timestamptz, claimed_by int,'
        ' last_error text, failed_at timestamptz, enqueued_at timestamptz NOT NULL DEFAULT now(),'
        ' PRIMARY KEY (%s))', queue, key_defs, rowembed.change_priority(), keys);
    EXECUTE format('CREATE UNIQUE INDEX ON %s (seq)', queue);
    EXECUTE format('CREATE INDEX ON %s (priority, seq) WHERE failed_at IS NULL', queue);
END
$body$;

-- SQL text: queue a key as a live change, replacing an older entry in any state
-- (a new version of the row voids claims, errors and back-off).
CREATE OR REPLACE FUNCTION rowembed._enqueue_change_sql(keys text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format(
        'ON CONFLICT (%s) DO UPDATE SET seq = excluded.seq, priority = %s, attempts = 0,'
        ' lease_until = NULL, claimed_by = NULL, last_error = NULL, failed_at = NULL,'
        ' enqueued_at = excluded.enqueued_at WHERE q.seq < excluded.seq',
        keys, rowembed.change_priority())
$$;

-- The change log: where the capture triggers of INSERT and UPDATE write. An
-- append-only table without an index (key, seq, logged_at): the cheapest write a
-- trigger can make, with no row lock and no index entry in the application's
-- transaction. Folding moves its rows into the queue (one entry per key, the
-- newest seq). A worker folds before it claims and when it writes: the work is
-- done where it is consumed, in batches, and a key changed many times meanwhile
-- is queued once; the dispatcher only looks whether a log has rows. A key
-- change and a DELETE still write the queue itself: they void a claim at once.
CREATE OR REPLACE FUNCTION rowembed._change_log_name(v rowembed.vectorizer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT format('%I.%I', v.home, 'rowembed_changes_' || v.id) $$;

CREATE OR REPLACE FUNCTION rowembed._change_log(vectorizer_id int) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT to_regclass(rowembed._change_log_name(z)) FROM rowembed.vectorizer AS z
     WHERE z.id = vectorizer_id
$$;

-- Creates vectorizer `v`'s change log if it is missing (on create, and on the
-- migrate that upgrades a vectorizer made before it), keyed like the queue,
-- owned and granted like it.
CREATE OR REPLACE FUNCTION rowembed._create_change_log(v rowembed.vectorizer) RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    log text := rowembed._change_log_name(v);
BEGIN
    IF rowembed._change_log(v.id) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %s AS SELECT %s, 0::bigint AS seq, now() AS logged_at'
                   ' FROM %s WITH NO DATA', log, rowembed._columns(v.pk_columns),
                   rowembed._qualified(v.queue_table));
    -- Rows live until a worker folds them: vacuum after a few thousand dead ones.
    EXECUTE format('ALTER TABLE %s ALTER seq SET NOT NULL, ALTER logged_at SET NOT NULL,'
                   ' ALTER logged_at SET DEFAULT now(),'
                   ' SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000)',
                   log);
    EXECUTE format('ALTER TABLE %s OWNER TO %I', log,
                   (SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                     WHERE c.oid = v.queue_table));
    PERFORM rowembed._copy_grants(v.queue_table, log::regclass);
END
$body$;

-- Changes logged and not folded yet for the vectorizer of queue `queue` (a key
-- changed twice counts twice).
CREATE OR REPLACE FUNCTION rowembed._logged_changes(queue regclass) RETURNS bigint
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    log regclass := rowembed._change_log((SELECT z.id FROM rowembed.vectorizer AS z
                                           WHERE z.queue_table = queue));
    n bigint := 0;
BEGIN
    IF log IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %s', log) INTO n;
    END IF;
    RETURN n;
END
$body$;

-- Moves up to `max_changes` of vectorizer `v`'s logged changes into its queue
-- (bounded: the queue entries it locks stay locked until the caller's
-- transaction ends); returns how many. Rows another fold holds are skipped, and
-- a queue entry another transaction holds is waited for briefly only: a fold
-- never stalls a worker or the application (what it skips is folded next time).
CREATE OR REPLACE FUNCTION rowembed._fold_changes(v rowembed.vectorizer, max_changes int)
RETURNS bigint
LANGUAGE plpgsql SET lock_timeout = '100ms' AS $body$
DECLARE
    keys text := rowembed._columns(v.pk_columns);
    folded bigint := 0;
BEGIN
    IF rowembed._change_log(v.id) IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        EXECUTE format(
            'WITH moved AS (DELETE FROM %1$s AS l WHERE l.ctid = ANY (ARRAY('
            '                   SELECT ctid FROM %1$s LIMIT $2 FOR UPDATE SKIP LOCKED))'
            '               RETURNING %2$s, seq, logged_at),'
            '     newest AS (SELECT DISTINCT ON (%2$s) %2$s, seq, logged_at FROM moved'
            '                 ORDER BY %2$s, seq DESC),'
            '     queued AS (INSERT INTO %3$s AS q (%2$s, seq, priority, enqueued_at)'
            '                SELECT %2$s, seq, $1, logged_at FROM newest ORDER BY %2$s %4$s'
            '                RETURNING 1)'
            ' SELECT count(*) FROM moved',
            rowembed._change_log_name(v), keys, rowembed._qualified(v.queue_table),
            rowembed._enqueue_change_sql(keys))
            INTO folded USING rowembed.change_priority(), max_changes;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        folded := 0;
    END;
    RETURN folded;
END
$body$;

-- Folds up to `max_changes` of one vectorizer's logged changes: a worker does
-- before it claims (a few thousand per transaction, until the log is empty) and
-- first in its write (an entry whose row changed since its claim then has a new
-- seq, and is not completed).
CREATE OR REPLACE FUNCTION rowembed.fold_changes_of(vectorizer_id int, max_changes int)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT rowembed._fold_changes(z, max_changes) FROM rowembed.vectorizer AS z
     WHERE z.id = fold_changes_of.vectorizer_id
$$;

-- Folds the change logs of the current role's working vectorizers now; returns
-- those that gained live changes (workers fold as they claim: this is for
-- operators and tests that look at the queue itself).
CREATE OR REPLACE FUNCTION rowembed.fold_changes() RETURNS TABLE (id int, folded bigint)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    FOR v IN SELECT * FROM rowembed._visible_vectorizers() LOOP
        CONTINUE WHEN rowembed._problem(v) IS NOT NULL;  -- status() shows why
        BEGIN
            folded := rowembed._fold_changes(v, 2147483647);
        EXCEPTION WHEN OTHERS THEN  -- altered meanwhile, or a privilege lost: status() shows it
            folded := 0;
        END;
        IF folded > 0 THEN
            id := v.id;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$body$;

-- Leases up to max_rows claimable entries of a vectorizer to the worker `token`,
-- live changes first, skipping entries other transactions hold; returns their
-- seqs, and whether this claim is of a suspect alone.
-- A suspect still carries the token of the worker that claimed it last: that
-- worker neither completed it, nor gave it back, nor recorded a failure, so its
-- process died or hung while holding it, perhaps because of this very row. Once
-- is no evidence (a killed worker or a restart leaves whole batches so): those
-- rows are claimed as usual. A row whose worker died with it twice is claimed
-- alone, so a row that kills its worker takes no batch with it, and one that has
-- done so max_attempts times is parked with that error. Only the window a plain
-- claim would take is looked at (the queue's order, no scan of the queue):
-- suspects, claimed before the rest, come first in it.
CREATE OR REPLACE FUNCTION rowembed.claim(
    vectorizer_id int, token int, max_rows int, lease_seconds float8)
RETURNS TABLE (seq bigint, suspect boolean)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    queue text;
    window_seqs bigint[];
    suspects bigint[];
    dead bigint[];
BEGIN
    v := rowembed._vectorizer_of(claim.vectorizer_id);
    queue := rowembed._qualified(v.queue_table);
    EXECUTE format(
        'SELECT coalesce(array_agg(w.seq ORDER BY w.priority, w.seq), ''{}''),'
        '       coalesce(array_agg(w.seq ORDER BY w.priority, w.seq)'
        '                FILTER (WHERE w.claimed_by IS NOT NULL AND w.attempts >= 2), ''{}''),'
        '       coalesce(array_agg(w.seq) FILTER (WHERE w.claimed_by IS NOT NULL'
        '                                        AND w.attempts >= $3), ''{}'')'
        '  FROM (SELECT seq, priority, claimed_by, attempts FROM %s WHERE %s'
        '        ORDER BY priority, seq LIMIT $2 FOR UPDATE SKIP LOCKED) AS w',
        queue, rowembed._claimable_sql())
        INTO window_seqs, suspects, dead
        USING ARRAY(SELECT rowembed.live_workers()), max_rows, v.max_attempts;
    IF cardinality(dead) > 0 THEN
        EXECUTE format(
            'UPDATE %s SET failed_at = now(), claimed_by = NULL, lease_until = NULL,'
            '       last_error = format(%L, attempts) WHERE seq = ANY ($1)',
            queue, 'the worker process died or hung while embedding this row (%s attempts)')
            USING dead;
    END IF;
    suspect := cardinality(suspects) > cardinality(dead);
    IF suspect THEN
        window_seqs := ARRAY(SELECT s FROM unnest(suspects) AS s WHERE s <> ALL (dead) LIMIT 1);
    ELSE
        window_seqs := ARRAY(SELECT s FROM unnest(window_seqs) AS s WHERE s <> ALL (dead));
    END IF;
    RETURN QUERY EXECUTE format(
        'UPDATE %s AS q SET lease_until = now() + make_interval(secs => $3),'
        '       claimed_by = $2, attempts = q.attempts + 1'
        ' WHERE q.seq = ANY ($1) RETURNING q.seq, $4',
        queue)
        USING window_seqs, token, lease_seconds, suspect;
END
$body$;

-- Gives back claims the worker `token` has not worked on (the attempt is not
-- counted); entries another transaction holds are skipped, never waited for.
CREATE OR REPLACE FUNCTION rowembed.release(vectorizer_id int, token int, seqs bigint[])
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    queue text := rowembed._qualified((SELECT z.queue_table FROM rowembed.vectorizer AS z
                                        WHERE z.id = release.vectorizer_id));
BEGIN
    EXECUTE format(
        'UPDATE %s AS q SET lease_until = NULL, claimed_by = NULL,'
        '       attempts = greatest(q.attempts - 1, 0)'
        '  FROM (SELECT seq FROM %s WHERE seq = ANY ($1) AND claimed_by = $2'
        '        FOR UPDATE SKIP LOCKED) AS mine WHERE q.seq = mine.seq',
        queue, queue)
        USING seqs, token;
END
$body$;

-- As release, with the entries claimable again only after `seconds`: their
-- model failed as a whole (missing, the wrong size), so the rows wait for it
-- without an attempt counted or an error of their own.
CREATE OR REPLACE FUNCTION rowembed.postpone(
    vectorizer_id int, token int, seqs bigint[], seconds float8)
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    queue text := rowembed._qualified((SELECT z.queue_table FROM rowembed.vectorizer AS z
                                        WHERE z.id = postpone.vectorizer_id));
BEGIN
    EXECUTE format(
        'UPDATE %s AS q SET lease_until = now() + make_interval(secs => $3), claimed_by = NULL,'
        '       attempts = greatest(q.attempts - 1, 0)'
        '  FROM (SELECT seq FROM %s WHERE seq = ANY ($1) AND claimed_by = $2'
        '        FOR UPDATE SKIP LOCKED) AS mine WHERE q.seq = mine.seq',
        queue, queue)
        USING seqs, token, seconds;
END
$body$;

-- Ends the claim `token` (taken by register_worker() in this session): its
-- entries still queued become claimable at once. A worker ends each claim once
-- its batch is written, so an entry the write skipped (an application's
-- transaction held it, then rolled back) waits for no lease.
CREATE OR REPLACE FUNCTION rowembed.end_claim(token int) RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_advisory_unlock(rowembed._lock_class('worker'), token) $$;

-- Records failed entries (seqs[i] failed with errors[i]): back off, and park after
-- the vectorizer's max_attempts. Only the version that failed: a row changed since
-- has a new seq and keeps its fresh entry.
CREATE OR REPLACE FUNCTION rowembed.record_failures(
    vectorizer_id int, seqs bigint[], errors text[])
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    v := rowembed._vectorizer_of(record_failures.vectorizer_id);
    EXECUTE format(
        'UPDATE %s AS q SET last_error = left(f.error, 2000), claimed_by = NULL,'
        '       lease_until = now() + make_interval(secs => rowembed._retry_delay(q.attempts)),'
        '       failed_at = CASE WHEN q.attempts >= $3 THEN now() END'
        '  FROM unnest($1::bigint[], $2::text[]) AS f(seq, error)'
        ' WHERE q.seq = f.seq',
        rowembed._qualified(v.queue_table))
        USING seqs, errors, v.max_attempts;
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

-- Row-level security that would hide rows of a source from the current role
-- (no BYPASSRLS, not its owner or forced) is an error, not rows that look
-- deleted (to the worker) or never existed (to the backfill).
CREATE OR REPLACE FUNCTION rowembed._check_sees_every_row(source regclass) RETURNS void
LANGUAGE plpgsql STABLE AS $body$
BEGIN
    IF (SELECT c.relrowsecurity
               AND NOT (r.rolsuper OR r.rolbypassrls
                        OR (pg_has_role(r.oid, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity))
          FROM pg_class c, pg_roles r WHERE c.oid = source AND r.rolname = current_user) THEN
        RAISE EXCEPTION 'rowembed: row-level security on % hides rows from role %', source,
            current_user USING ERRCODE = 'insufficient_privilege',
            HINT = 'ALTER ROLE ... BYPASSRLS for the worker role, or disable the policy.';
    END IF;
END
$body$;

-- Backfill entries still queued (not parked), counted up to `cap`.
CREATE OR REPLACE FUNCTION rowembed.backfill_backlog(vectorizer_id int, cap bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %s WHERE priority = $1'
                   ' AND failed_at IS NULL LIMIT $2) AS q',
                   rowembed._qualified((SELECT z.queue_table FROM rowembed.vectorizer AS z
                                         WHERE z.id = backfill_backlog.vectorizer_id)))
        INTO n USING rowembed.backfill_priority(), cap;
    RETURN n;
END
$body$;

-- The change signal. The capture triggers send no NOTIFY: a transaction that
-- sent one commits behind PostgreSQL's global notify lock, so every writer of
-- every vectorized table would commit one at a time, cluster-wide. The
-- dispatcher polls this clock instead, and looks at the change logs while it
-- moves (workers/dispatcher.py, ChangeWatch).

-- The last value drawn from change_seq (moved by every change and backfill
-- row, before its transaction commits), then the xmin and xmax of a snapshot
-- taken after that read (VOLATILE: each statement takes a new one). Every
-- transaction that drew a value up to `seq` has an id below that xmax, so once
-- a later clock's xmin has passed it, all of them have ended. A sequence read.
CREATE OR REPLACE FUNCTION rowembed.change_clock(OUT seq bigint, OUT xmin bigint, OUT xmax bigint)
LANGUAGE plpgsql VOLATILE AS $body$
BEGIN
    seq := coalesce(pg_sequence_last_value('rowembed.change_seq'::regclass), 0);
    SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint
      INTO xmin, xmax FROM pg_current_snapshot() AS s;
END
$body$;

-- The loops over every vectorizer that shared processes run (the dispatcher's
-- polls and sweep, status(), the metrics scrape) wait at most half a second for
-- a lock on one vectorizer's tables (`SET lock_timeout` on each), then skip it:
-- a tenant holding a lock on her own queue delays no one else's work.

-- Vectorizers of the current role whose change log has rows: what the
-- dispatcher hints while the change clock moves. Reads one row of each log.
CREATE OR REPLACE FUNCTION rowembed.vectorizers_with_logged_changes() RETURNS SETOF int
LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS $body$
DECLARE
    v rowembed.vectorizer;
    logged boolean;
BEGIN
    FOR v IN SELECT * FROM rowembed._visible_vectorizers() LOOP
        CONTINUE WHEN rowembed._problem(v) IS NOT NULL;  -- status() shows why
        BEGIN
            EXECUTE format('SELECT EXISTS (SELECT FROM %s)', rowembed._change_log(v.id))
                INTO logged;
        EXCEPTION WHEN OTHERS THEN  -- dropped or altered meanwhile: the next sweep sees it
            logged := false;
        END;
        IF logged THEN
            RETURN NEXT v.id;
        END IF;
    END LOOP;
END
$body$;

-- Vectorizers of the current role with entries a worker may claim now, or
-- changes logged (live), and
-- whether any of those is a live change rather than backfill: what the
-- dispatcher's sweep sends hints for (a lost hint is found here). Reads the first
-- such entry only; skips broken vectorizers.
CREATE OR REPLACE FUNCTION rowembed.vectorizers_with_work()
RETURNS TABLE (id int, changes boolean)
LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS $body$
DECLARE
    v rowembed.vectorizer;
    live int[] := ARRAY(SELECT rowembed.live_workers());
    first_priority smallint;
BEGIN
    FOR v IN SELECT * FROM rowembed._visible_vectorizers() LOOP
        CONTINUE WHEN rowembed._problem(v) IS NOT NULL;  -- status() shows why
        BEGIN
            EXECUTE format('SELECT CASE WHEN EXISTS (SELECT FROM %s) THEN $2 END',
                           rowembed._change_log(v.id))
                INTO first_priority USING live, rowembed.change_priority();
            IF first_priority IS NULL THEN
                EXECUTE format('SELECT priority FROM %s WHERE %s ORDER BY priority LIMIT 1',
                               rowembed._qualified(v.queue_table), rowembed._claimable_sql())
                    INTO first_priority USING live;
            END IF;
        EXCEPTION WHEN OTHERS THEN  -- dropped or altered meanwhile: the next sweep sees it
            first_priority := NULL;
        END;
        IF first_priority IS NOT NULL THEN
            id := v.id;
            changes := first_priority = rowembed.change_priority();
            RETURN NEXT;
        END IF;
    END LOOP;
END
$body$;

-- The current text of claimed entries' rows: (seq, the embedded text or NULL when
-- the row is gone or its text blank, that text's hash, the stored embedding's
-- hash, which a chunked row's chunks share). Read in a statement after the claim,
-- so its snapshot is newer than every change the claimed seqs stand for.
CREATE OR REPLACE FUNCTION rowembed.read_claimed(vectorizer_id int, seqs bigint[])
RETURNS TABLE (seq bigint, text text, text_hash bytea, stored_hash bytea)
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    v := rowembed._vectorizer_of(read_claimed.vectorizer_id);
    PERFORM rowembed._check_sees_every_row(v.source);
    RETURN QUERY EXECUTE format(
        'SELECT q.seq, t.text, rowembed._text_hash(t.text), e.text_hash'
        '  FROM %s AS q LEFT JOIN %s AS s ON %s'
        '  LEFT JOIN LATERAL (SELECT e.text_hash FROM %s AS e WHERE %s LIMIT 1) AS e ON true'
        ' CROSS JOIN LATERAL (SELECT %s AS text) AS t'
        ' WHERE q.seq = ANY ($1)',
        rowembed._qualified(v.queue_table), rowembed._qualified(v.source),
        rowembed._equal(v.pk_columns, 's', 'q'), rowembed._qualified(v.destination),
        rowembed._equal(v.pk_columns, 'e', 'q'), rowembed._text_sql(v, 's'))
        USING seqs;
END
$body$;
