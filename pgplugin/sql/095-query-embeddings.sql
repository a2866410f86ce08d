-- Query embeddings and rerank scores for SQL callers: a text becomes a vector
-- on the workers' query queue (search_text, embed_query), and (query, passage)
-- pairs become scores on the rerank queue (rerank, search_text's rerank), so
-- that psql alone can search by text.
--
-- The caller's transaction cannot hand a request to a worker (its writes are
-- invisible until it commits, and NOTIFY waits for the commit too), so the
-- request goes through a loopback dblink session (_ask_workers): inserted and
-- notified there at once; the dispatcher hears the NOTIFY and sends a task to
-- the queue; a worker writes the answer (rowembed.query_cache,
-- rowembed.rerank_request); the caller polls over the same loopback session (its
-- own snapshot may be older) until the answer or its timeout. A cached query
-- text never reaches a worker.

-- The schema dblink is installed in; NULL when it is not.
CREATE OR REPLACE FUNCTION rowembed._dblink_schema() RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'dblink'
$$;

-- A value quoted for a libpq connection string.
CREATE OR REPLACE FUNCTION rowembed._conninfo_value(value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT '''' || replace(replace(value, '\', '\\'), '''', '\''') || ''''
$$;

-- The loopback sessions' role: not a superuser (it never takes the slots kept
-- for superusers), at most rowembed.loopback_sessions() at once, with exactly
-- the rights the request protocol needs. Cluster-wide, made once by a migrate
-- that may create roles; without it the sessions run as the functions' owner.
CREATE OR REPLACE FUNCTION rowembed.loopback_sessions() RETURNS int
LANGUAGE sql IMMUTABLE AS 'SELECT 32';

DO $loopback$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rowembed_loopback') THEN
        EXECUTE format('CREATE ROLE rowembed_loopback LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
                       ' NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT %s',
                       rowembed.loopback_sessions());
    END IF;
    GRANT USAGE ON SCHEMA rowembed TO rowembed_loopback;
    GRANT INSERT, SELECT, DELETE ON rowembed.query_request TO rowembed_loopback;
    GRANT SELECT, DELETE ON rowembed.query_cache TO rowembed_loopback;
    GRANT INSERT, SELECT, DELETE ON rowembed.rerank_request TO rowembed_loopback;
    -- The SECURITY DEFINER callers checked who may ask for which vectorizer.
    DROP POLICY IF EXISTS loopback ON rowembed.query_request;
    DROP POLICY IF EXISTS loopback ON rowembed.query_cache;
    DROP POLICY IF EXISTS loopback ON rowembed.rerank_request;
    CREATE POLICY loopback ON rowembed.query_request TO rowembed_loopback USING (true);
    CREATE POLICY loopback ON rowembed.query_cache TO rowembed_loopback USING (true);
    CREATE POLICY loopback ON rowembed.rerank_request TO rowembed_loopback USING (true);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'rowembed: the role rowembed_loopback could not be made (%): search_text''s'
                 ' loopback sessions run as the owner of rowembed''s functions', SQLERRM;
END
$loopback$;

-- The loopback session's connection string: rowembed.query_connection's, else
-- this server's first socket directory (or localhost), port and database, as
-- rowembed_loopback (or, where it does not exist, the current role: the owner,
-- in the SECURITY DEFINER functions below). On a hot standby, the connection
-- to the primary that set_query_connection(..., standby => true) set, or NULL.
CREATE OR REPLACE FUNCTION rowembed._loopback_conninfo() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_is_in_recovery() THEN
        (SELECT c.conninfo FROM rowembed.query_connection AS c WHERE c.on_standby)
    ELSE coalesce(
        (SELECT c.conninfo FROM rowembed.query_connection AS c WHERE NOT c.on_standby),
        format('host=%s port=%s dbname=%s user=%s application_name=rowembed-query',
            -- pg_settings, not current_setting(): a role that may not read it sees no row.
            rowembed._conninfo_value(coalesce(nullif(btrim(split_part(
                (SELECT s.setting FROM pg_settings AS s WHERE s.name = 'unix_socket_directories'),
                ',', 1)), ''), 'localhost')),
            current_setting('port'),
            rowembed._conninfo_value(current_database()),
            rowembed._conninfo_value(coalesce(
                (SELECT r.rolname FROM pg_roles AS r WHERE r.rolname = 'rowembed_loopback'),
                current_user)))) END
$$;

-- Why search_text's loopback session cannot open on this primary, with the
-- fix, or NULLs: dblink missing, or rowembed's functions owned by a role that
-- is not a superuser (dblink then connects only with a password the server
-- asks for) and no connection string set. `rowembed migrate` prints it; the
-- search functions raise it before they try.
CREATE OR REPLACE FUNCTION rowembed._loopback_problem(OUT problem text, OUT fix text)
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    owner name := (SELECT p.proowner::regrole::name FROM pg_proc AS p
                    WHERE p.oid = 'rowembed._query_embedding(int, text, float8)'::regprocedure);
    login name := CASE WHEN EXISTS (SELECT FROM pg_roles AS r WHERE r.rolname = 'rowembed_loopback')
                       THEN 'rowembed_loopback' ELSE owner END;
BEGIN
    IF rowembed._dblink_schema() IS NULL THEN
        problem := 'search_text, hybrid_search, embed_query and rerank ask the workers over'
                   ' dblink, which is not installed in this database';
        fix := 'As a superuser: CREATE EXTENSION dblink;';
    ELSIF NOT pg_is_in_recovery()
          AND NOT (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = owner)
          AND NOT EXISTS (SELECT FROM rowembed.query_connection AS c WHERE NOT c.on_standby) THEN
        problem := format('rowembed''s functions are owned by %I, not a superuser, and dblink'
                          ' lets such a role open search_text''s loopback session only with a'
                          ' password the server asks for; none is set', owner);
        fix := format('Give %I a password, have pg_hba.conf ask for it (scram-sha-256), then:'
                      ' SELECT rowembed.set_query_connection(''host=... dbname=%s user=%s'
                      ' password=...'');', login, current_database(), login);
    END IF;
END
$body$;

-- Sets (or, with NULL, clears) the loopback session's connection string, where
-- the default does not authenticate, e.g. 'host=/var/run/postgresql dbname=app
-- user=rowembed_loopback password=...' (after ALTER ROLE rowembed_loopback
-- PASSWORD ...); with `standby`, the connection hot standbys use to reach the
-- primary ('host=primary.internal dbname=app user=rowembed_loopback ...'): set
-- on the primary, it replicates to them. Only the owner of rowembed's tables
-- can; no other role can read it.
CREATE OR REPLACE FUNCTION rowembed.set_query_connection(
    conninfo text, standby boolean DEFAULT false) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rowembed.query_connection AS c WHERE c.on_standby = set_query_connection.standby;
    INSERT INTO rowembed.query_connection (conninfo, on_standby)
    SELECT set_query_connection.conninfo, set_query_connection.standby
     WHERE set_query_connection.conninfo IS NOT NULL;
$$;

-- Asks the workers through a loopback session of its own: runs `request` there
-- (an INSERT and a NOTIFY, committed at once), then `poll` (one row: the answer
-- as text, or an error) until either is not NULL or `wait` seconds pass; then
-- `withdraw`, and an error naming `queue`. On a hot standby the session is to
-- the primary: the answer comes from there, with no wait for replay (polled
-- once before the request: the primary may have it cached already). Closes the session before it returns,
-- whatever happens: called by the SECURITY DEFINER functions below, it runs as
-- their owner, and a session left open would outlive them in the caller's
-- backend. Returns ARRAY[answer, error].
CREATE OR REPLACE FUNCTION rowembed._ask_workers(
    request text, poll text, withdraw text, queue text, wait float8)
RETURNS text[]
LANGUAGE plpgsql AS $body$
DECLARE
    dblink name := rowembed._dblink_schema();
    link text := format('rowembed_ask_%s_%s', pg_backend_pid(), floor(random() * 1e9));
    standby boolean := pg_is_in_recovery();
    conninfo text := rowembed._loopback_conninfo();
    why text;
    deadline timestamptz;
    pause float8 := 0.001;
    answer text;
    failed text;
    fix text;
BEGIN
    IF wait IS NULL OR NOT wait > 0 THEN
        RAISE EXCEPTION 'rowembed: timeout_seconds must be positive, not %', wait;
    END IF;
    IF conninfo IS NULL THEN  -- a standby, with no connection to its primary
        RAISE EXCEPTION 'rowembed: this server is a hot standby: a search by text asks the'
                        ' primary''s workers, and no connection to the primary is set'
            USING HINT = 'On the primary: SELECT rowembed.set_query_connection(''host=<primary>'
                         ' dbname=... user=rowembed_loopback password=...'', standby => true).';
    END IF;
    SELECT * INTO why, fix FROM rowembed._loopback_problem();
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: %', why USING HINT = fix;
    END IF;
    deadline := clock_timestamp() + make_interval(secs => wait);
    BEGIN
        EXECUTE format('SELECT %I.dblink_connect(%L, %L)', dblink, link, conninfo);
    EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
        RAISE EXCEPTION 'rowembed: the loopback session to ask the workers could not connect: %',
            SQLERRM
            USING HINT = 'Give it a connection string that authenticates (a password), or wait:'
                         ' at most rowembed.loopback_sessions() are open at once.'
                         ' SELECT rowembed.set_query_connection(''host=... user=... password=...'').';
    WHEN prohibited_sql_statement_attempted THEN  -- dblink: "password is required"
        RAISE EXCEPTION 'rowembed: the loopback session connected without a password, which dblink'
                        ' refuses to % (not a superuser)', current_user
            USING HINT = 'Have pg_hba.conf ask for the password (scram-sha-256) on the host of'
                         ' rowembed.set_query_connection''s string, and put the password in it.';
    END;
    BEGIN
        IF standby THEN
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS t(answer text, error text)',
                           dblink, link, poll)
                INTO answer, failed;
        END IF;
        IF answer IS NULL AND failed IS NULL THEN
            EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, request);
        END IF;
        LOOP
            EXIT WHEN answer IS NOT NULL OR failed IS NOT NULL;
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS t(answer text, error text)',
                           dblink, link, poll)
                INTO answer, failed;
            EXIT WHEN answer IS NOT NULL OR failed IS NOT NULL;
            IF clock_timestamp() >= deadline THEN
                EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, withdraw);
                IF standby THEN  -- the requests and the workers are the primary's
                    EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS t(why text)', dblink, link,
                                   format('SELECT rowembed._why_unanswered(%L)', queue))
                        INTO why;
                ELSE
                    why := rowembed._why_unanswered(queue);
                END IF;
                RAISE EXCEPTION 'rowembed: no worker answered on the % queue (rowembed.%) within % s: %',
                    queue, queue, wait, why;
            END IF;
            PERFORM pg_sleep(pause);
            pause := least(pause * 2, 0.02);
        END LOOP;
        EXECUTE format('SELECT %I.dblink_disconnect(%L)', dblink, link);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        EXECUTE format('SELECT %I.dblink_disconnect(%L)', dblink, link);
        RAISE;
    END;
    RETURN ARRAY[answer, failed];
END
$body$;

-- The most passages one rerank request may hold (search_text's candidates with
-- rerank, rerank()'s passages): a worker scores one request at a time.
CREATE OR REPLACE FUNCTION rowembed.max_rerank_passages() RETURNS int
LANGUAGE sql IMMUTABLE AS 'SELECT 1000';

-- The most candidates a search by text may ask for (without rerank).
CREATE OR REPLACE FUNCTION rowembed.max_candidates() RETURNS int
LANGUAGE sql IMMUTABLE AS 'SELECT 10000';

-- `candidates`, if within bounds (max_rerank_passages() when they are reranked,
-- else max_candidates()): checked before any worker is asked.
CREATE OR REPLACE FUNCTION rowembed._bounded_candidates(candidates int, reranked boolean)
RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $body$
DECLARE
    most int := CASE WHEN reranked THEN rowembed.max_rerank_passages()
                     ELSE rowembed.max_candidates() END;
BEGIN
    IF candidates IS NULL OR candidates < 1 OR candidates > most THEN
        RAISE EXCEPTION 'rowembed: candidates must be from 1 to %, not %', most,
            coalesce(candidates::text, 'NULL');
    END IF;
    RETURN candidates;
END
$body$;

-- The longest a caller may wait for a worker: a loopback session is held as long.
CREATE OR REPLACE FUNCTION rowembed.max_query_timeout() RETURNS float8
LANGUAGE sql IMMUTABLE AS 'SELECT 60::float8';

-- Why a request on `queue` ('query' or 'rerank') went unanswered, from who is
-- connected (pg_stat_activity shows every role the application names): no
-- dispatcher (no worker hears of it), a dispatcher that cannot reach its broker
-- (it says so in its application_name), no query worker, or busy ones.
CREATE OR REPLACE FUNCTION rowembed._why_unanswered(queue text) RETURNS text
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    dispatchers text[];
    workers bigint;
    waiting bigint;
BEGIN
    SELECT array_agg(a.application_name) INTO dispatchers FROM pg_stat_activity AS a
     WHERE a.datname = current_database()
       AND split_part(a.application_name, ':', 1) = 'rowembed-dispatcher';
    IF dispatchers IS NULL THEN
        RETURN 'no dispatcher is connected to this database, so no worker hears of requests'
               ' (start rowembed worker, or rowembed dispatcher)';
    ELSIF NOT 'rowembed-dispatcher' = ANY (dispatchers) THEN
        RETURN format('the dispatcher cannot reach its broker (%s): start it, or fix'
                      ' ROWEMBED_REDIS_URL', substr(dispatchers[1], 22));
    END IF;
    SELECT count(*) INTO workers FROM pg_stat_activity AS a
     WHERE a.datname = current_database() AND a.application_name = 'rowembed-query-worker';
    IF workers = 0 THEN
        RETURN format('no worker serving the %s queue is connected to this database (start'
                      ' rowembed worker, whose --queues include %s)', queue, queue);
    END IF;
    IF queue = 'query' THEN
        SELECT count(*) INTO waiting FROM rowembed.query_request;
    ELSE
        SELECT count(*) INTO waiting FROM rowembed.rerank_request AS r WHERE rowembed._rerank_waits(r);
    END IF;
    RETURN format('%s worker(s) serve the %s queue and are busy: %s request(s) wait; give it'
                  ' longer (timeout_seconds, SET rowembed.query_timeout) or start more',
                  workers, queue, waiting);
END
$body$;

-- Seconds to wait for a worker: the call's, else rowembed.query_timeout, else 5;
-- at most max_query_timeout().
CREATE OR REPLACE FUNCTION rowembed._query_timeout(timeout_seconds float8) RETURNS float8
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    wait float8 := coalesce(timeout_seconds,
                            nullif(current_setting('rowembed.query_timeout', true), '')::float8, 5);
BEGIN
    IF wait > rowembed.max_query_timeout() THEN
        RAISE EXCEPTION 'rowembed: a query waits at most % s for a worker, not %',
            rowembed.max_query_timeout(), wait
            USING HINT = 'Pass a smaller timeout_seconds (or SET rowembed.query_timeout).';
    END IF;
    RETURN wait;
END
$body$;

-- Whether the session may search vectorizer `v`: it owns it, or reads its embeddings.
CREATE OR REPLACE FUNCTION rowembed._session_searches(v rowembed.vectorizer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT rowembed._session_is(v.owner)
        OR coalesce(pg_catalog.has_table_privilege(session_user, v.destination, 'SELECT'), false)
$$;

-- Vectorizer `vectorizer_id`, if the session may search it.
CREATE OR REPLACE FUNCTION rowembed._searched(vectorizer_id int) RETURNS rowembed.vectorizer
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id;
    IF NOT FOUND OR NOT rowembed._session_searches(v) THEN
        RAISE EXCEPTION 'rowembed: % may not search vectorizer %', session_user, vectorizer_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v;
END
$body$;

-- The request protocol, in one place for both sides: the callers' loopback
-- session (below) and the workers (pgplugin/queries.py) call these.

-- A query's answer, polled: its vector as text, or the error a worker recorded
-- (read once: its row goes as it is read).
CREATE OR REPLACE FUNCTION rowembed._query_answer(
    vectorizer_id int, text_hash bytea, OUT answer text, OUT error text)
LANGUAGE sql AS $$
    WITH failed AS (
        DELETE FROM rowembed.query_cache AS c
         WHERE c.vectorizer_id = _query_answer.vectorizer_id
           AND c.text_hash = _query_answer.text_hash AND c.error IS NOT NULL
        RETURNING c.error)
    SELECT (SELECT c.embedding::text FROM rowembed.query_cache AS c
             WHERE c.vectorizer_id = _query_answer.vectorizer_id
               AND c.text_hash = _query_answer.text_hash AND c.error IS NULL),
           (SELECT f.error FROM failed AS f)
$$;

-- Takes up to `max_requests` waiting query texts of the vectorizers the current
-- role works (row-level security), oldest first, with their model. In the
-- caller's transaction: if it rolls back (the worker died), they wait again.
CREATE OR REPLACE FUNCTION rowembed.take_query_requests(max_requests int)
RETURNS TABLE (vectorizer_id int, model text, text_hash bytea, text text)
LANGUAGE sql AS $$
    WITH taken AS (
        DELETE FROM rowembed.query_request AS r USING (
            SELECT q.vectorizer_id, q.text_hash FROM rowembed.query_request AS q
             ORDER BY q.requested_at LIMIT max_requests FOR UPDATE SKIP LOCKED) AS t
         WHERE (r.vectorizer_id, r.text_hash) = (t.vectorizer_id, t.text_hash)
        RETURNING r.vectorizer_id, r.text_hash, r.text)
    SELECT t.vectorizer_id, z.model, t.text_hash, t.text
      FROM taken AS t JOIN rowembed.vectorizer AS z ON z.id = t.vectorizer_id
$$;

-- A worker's answer to a query text: its vector, or why there is none.
CREATE OR REPLACE FUNCTION rowembed.answer_query(
    vectorizer_id int, text_hash bytea, embedding real[], error text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rowembed.query_cache AS c (vectorizer_id, text_hash, embedding, error)
    VALUES (answer_query.vectorizer_id, answer_query.text_hash, answer_query.embedding,
            answer_query.error)
    ON CONFLICT ON CONSTRAINT query_cache_pkey DO UPDATE
       SET embedding = excluded.embedding, error = excluded.error, created_at = now()
$$;

CREATE OR REPLACE FUNCTION rowembed.query_requests_waiting() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM rowembed.query_request)
$$;

-- Drops the oldest cached query vectors beyond `keep` (of those the current
-- role reaches); returns how many.
CREATE OR REPLACE FUNCTION rowembed.prune_query_cache(keep int) RETURNS bigint
LANGUAGE sql AS $$
    WITH pruned AS (
        DELETE FROM rowembed.query_cache WHERE created_at < (
            SELECT c.created_at FROM rowembed.query_cache AS c
             ORDER BY c.created_at DESC OFFSET greatest(keep - 1, 0) LIMIT 1)
        RETURNING 1)
    SELECT count(*) FROM pruned
$$;

-- Whether rerank request `r` waits for a worker.
CREATE OR REPLACE FUNCTION rowembed._rerank_waits(r rowembed.rerank_request) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.scores IS NULL AND r.error IS NULL
$$;

-- A rerank request's answer, polled: the scores as text, or the error; the
-- request goes once answered.
CREATE OR REPLACE FUNCTION rowembed._rerank_answer(id uuid, OUT answer text, OUT error text)
LANGUAGE sql AS $$
    DELETE FROM rowembed.rerank_request AS r
     WHERE r.id = _rerank_answer.id AND NOT rowembed._rerank_waits(r)
    RETURNING r.scores::text, r.error
$$;

-- Up to `max_requests` unanswered rerank requests of the vectorizers the
-- current role works, with their rerank model, locked until the caller's
-- transaction ends.
CREATE OR REPLACE FUNCTION rowembed.take_rerank_requests(max_requests int)
RETURNS TABLE (id uuid, vectorizer_id int, model text, query text, passages text[])
LANGUAGE sql AS $$
    SELECT r.id, r.vectorizer_id, z.rerank_model, r.query, r.passages
      FROM rowembed.rerank_request AS r JOIN rowembed.vectorizer AS z ON z.id = r.vectorizer_id
     WHERE rowembed._rerank_waits(r)
     ORDER BY r.requested_at LIMIT max_requests
       FOR UPDATE OF r SKIP LOCKED
$$;

CREATE OR REPLACE FUNCTION rowembed.answer_rerank(id uuid, scores real[], error text)
RETURNS void
LANGUAGE sql AS $$
    UPDATE rowembed.rerank_request AS r
       SET scores = answer_rerank.scores, error = answer_rerank.error
     WHERE r.id = answer_rerank.id
$$;

CREATE OR REPLACE FUNCTION rowembed.rerank_requests_waiting() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM rowembed.rerank_request AS r WHERE rowembed._rerank_waits(r))
$$;

-- The query vector of `query` for vectorizer `vectorizer_id` (its model and
-- query instruction): the cached one, else a worker's (_ask_workers). SECURITY
-- DEFINER because dblink needs its owner's right to open the loopback session;
-- the statements are fixed, the arguments literals. The caller must be allowed
-- to search the vectorizer; the cache is the vectorizer's own.
CREATE OR REPLACE FUNCTION rowembed._query_embedding(
    vectorizer_id int, query text, timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._searched(vectorizer_id);
    full_text text := v.query_instruction || query;
    hash bytea := rowembed._text_hash(full_text);
    cached real[];
    answer text[];
BEGIN
    SELECT c.embedding INTO cached FROM rowembed.query_cache AS c
     WHERE c.vectorizer_id = v.id AND c.text_hash = hash AND c.error IS NULL;
    IF cached IS NOT NULL THEN
        RETURN cached;
    END IF;
    answer := rowembed._ask_workers(
        pg_catalog.format('INSERT INTO rowembed.query_request (vectorizer_id, text_hash, text)'
                          ' VALUES (%s, %L, %L) ON CONFLICT DO NOTHING; NOTIFY rowembed, %L',
                          v.id, hash, full_text, 'query'),
        pg_catalog.format('SELECT * FROM rowembed._query_answer(%s, %L)', v.id, hash),
        pg_catalog.format('DELETE FROM rowembed.query_request WHERE vectorizer_id = %s'
                          ' AND text_hash = %L', v.id, hash),
        'query', rowembed._query_timeout(timeout_seconds));
    IF answer[2] IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: the worker could not embed the query: %', answer[2];
    END IF;
    RETURN answer[1]::real[];
END
$body$;
REVOKE ALL ON FUNCTION rowembed._query_embedding(int, text, float8) FROM PUBLIC;

-- Scores of (query, passage) pairs by the rerank model of vectorizer
-- `vectorizer_id`, in the passages' order, from a worker on the rerank queue.
-- SECURITY DEFINER as _query_embedding, for the same callers.
CREATE OR REPLACE FUNCTION rowembed._rerank_scores(
    vectorizer_id int, query text, passages text[], timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._searched(vectorizer_id);
    id uuid := pg_catalog.gen_random_uuid();
    answer text[];
BEGIN
    IF coalesce(pg_catalog.cardinality(passages), 0) = 0 THEN
        RETURN '{}';
    ELSIF pg_catalog.cardinality(passages) > rowembed.max_rerank_passages() THEN
        -- One request holds a worker: a bounded one never starves the others.
        RAISE EXCEPTION 'rowembed: a rerank takes at most % passages, not %',
            rowembed.max_rerank_passages(), pg_catalog.cardinality(passages)
            USING HINT = 'Rerank fewer candidates (search_text''s candidates => ...).';
    END IF;
    answer := rowembed._ask_workers(
        pg_catalog.format('INSERT INTO rowembed.rerank_request (id, vectorizer_id, query, passages)'
                          ' VALUES (%L, %s, %L, %L); NOTIFY rowembed, %L',
                          id, v.id, query, pg_catalog.array_replace(passages, NULL, ''), 'rerank'),
        pg_catalog.format('SELECT * FROM rowembed._rerank_answer(%L)', id),
        pg_catalog.format('DELETE FROM rowembed.rerank_request WHERE id = %L', id),
        'rerank', rowembed._query_timeout(timeout_seconds));
    IF answer[2] IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: the worker could not rerank: %', answer[2];
    END IF;
    RETURN answer[1]::real[];
END
$body$;
REVOKE ALL ON FUNCTION rowembed._rerank_scores(int, text, text[], float8) FROM PUBLIC;

-- EXECUTE on the functions that ask the workers, for a role that searches.
CREATE OR REPLACE FUNCTION rowembed._grant_query_functions(role name) RETURNS void
LANGUAGE plpgsql AS $body$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION rowembed._query_embedding(int, text, float8),'
                   ' rowembed._rerank_scores(int, text, text[], float8) TO %I', role);
END
$body$;

-- The query vector of `query` for a vectorizer: its model and query instruction,
-- served by the workers (or the cache). For SQL of one's own:
--   ORDER BY embedding <=> rowembed.embed_query('docs', 'key rotation')
CREATE OR REPLACE FUNCTION rowembed.embed_query(
    vectorizer text, query text, timeout_seconds float8 DEFAULT NULL)
RETURNS @extschema:vector@.vector
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(vectorizer);
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'rowembed: the query text is empty';
    END IF;
    RETURN rowembed._query_embedding(v.id, query, timeout_seconds)::@extschema:vector@.vector;
END
$body$;

-- Cross-encoder scores of (query, passage) pairs with a vectorizer's rerank
-- model, in the passages' order, from a worker on the rerank queue.
CREATE OR REPLACE FUNCTION rowembed.rerank(
    vectorizer text, query text, passages text[], timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(vectorizer);
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'rowembed: the query text is empty';
    END IF;
    RETURN rowembed._rerank_scores(v.id, query, passages, timeout_seconds);
END
$body$;

-- Rows of a table most similar to a query text: search() with the text embedded
-- by the vectorizer's model on the workers (see embed_query). With `rerank`,
-- `candidates` rows are retrieved and the k that the vectorizer's cross-encoder
-- scores highest are returned, best first, with their `rerank_score`. A chunked
-- vectorizer's rows come with their best chunk (as search()).
-- Usage: SELECT similarity, (item).* FROM rowembed.search_text(NULL::docs, 'key rotation', 10)
CREATE OR REPLACE FUNCTION rowembed.search_text(
    source anyelement,
    query text,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    timeout_seconds float8 DEFAULT NULL,
    rerank boolean DEFAULT false,
    candidates int DEFAULT 100)
RETURNS TABLE (similarity float8, item anyelement, rerank_score float8, chunk int,
               chunk_start int, chunk_end int, snippet text)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    bounded int := rowembed._bounded_candidates(candidates, rerank);  -- before any worker
    query_vector @extschema:vector@.vector := rowembed.embed_query(v.name, query, timeout_seconds);
BEGIN
    IF NOT rerank THEN
        RETURN QUERY SELECT s.similarity, s.item, NULL::float8, s.chunk, s.chunk_start,
                            s.chunk_end, s.snippet
                       FROM rowembed.search(source, query_vector, k, min_similarity, v.name,
                                            filter) AS s;
        RETURN;
    END IF;
    -- The cross-encoder reads a chunked row's best chunk, else the row's text.
    RETURN QUERY
        WITH found AS (
            SELECT s.*, coalesce(s.snippet, rowembed.embedded_text(s.item, v.name)) AS text,
                   row_number() OVER () AS n
              FROM rowembed.search(source, query_vector, greatest(k, candidates),
                                   min_similarity, v.name, filter) AS s
        ), scored AS (
            SELECT rowembed.rerank(v.name, query,
                                   (SELECT array_agg(f.text ORDER BY f.n) FROM found AS f),
                                   timeout_seconds) AS scores
        )
        SELECT f.similarity, f.item, sc.scores[f.n]::float8, f.chunk, f.chunk_start,
               f.chunk_end, f.snippet
          FROM found AS f, scored AS sc
         ORDER BY sc.scores[f.n] DESC, f.similarity DESC
         LIMIT k;
END
$body$;
