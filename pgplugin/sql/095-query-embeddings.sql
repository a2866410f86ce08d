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

-- The loopback session's connection string: rowembed.query_connection's, else
-- this server's first socket directory (or localhost), port and database, as
-- the current role (the owner, in the SECURITY DEFINER functions below).
CREATE OR REPLACE FUNCTION rowembed._loopback_conninfo() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT c.conninfo FROM rowembed.query_connection AS c),
        format('host=%s port=%s dbname=%s user=%s application_name=rowembed-query',
            rowembed._conninfo_value(coalesce(nullif(btrim(split_part(
                current_setting('unix_socket_directories'), ',', 1)), ''), 'localhost')),
            current_setting('port'),
            rowembed._conninfo_value(current_database()),
            rowembed._conninfo_value(current_user)))
$$;

-- Sets (or, with NULL, clears) the loopback session's connection string, e.g.
-- 'host=/var/run/postgresql dbname=app user=rowembed_query password=...' for a
-- role with SELECT, INSERT, DELETE on rowembed.query_request and
-- rowembed.rerank_request and SELECT, DELETE on rowembed.query_cache. Only the
-- owner of rowembed's tables can; no other role can read it.
CREATE OR REPLACE FUNCTION rowembed.set_query_connection(conninfo text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rowembed.query_connection;
    INSERT INTO rowembed.query_connection (conninfo)
    SELECT set_query_connection.conninfo WHERE set_query_connection.conninfo IS NOT NULL;
$$;

-- Asks the workers through a loopback session of its own: runs `request` there
-- (an INSERT and a NOTIFY, committed at once), then `poll` (one row: the answer
-- as text, or an error) until either is not NULL or `wait` seconds pass; then
-- `withdraw`, and an error naming `queue`. Closes the session before it returns,
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
    deadline timestamptz;
    pause float8 := 0.001;
    answer text;
    failed text;
BEGIN
    IF dblink IS NULL THEN
        RAISE EXCEPTION 'rowembed: asking the workers from SQL needs the dblink extension'
            USING HINT = 'CREATE EXTENSION dblink (a superuser), then rowembed migrate.';
    END IF;
    IF wait IS NULL OR NOT wait > 0 THEN
        RAISE EXCEPTION 'rowembed: timeout_seconds must be positive, not %', wait;
    END IF;
    deadline := clock_timestamp() + make_interval(secs => wait);
    BEGIN
        EXECUTE format('SELECT %I.dblink_connect(%L, %L)', dblink, link,
                       rowembed._loopback_conninfo());
    EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
        RAISE EXCEPTION 'rowembed: the loopback session to ask the workers could not connect: %',
            SQLERRM
            USING HINT = 'Give it a connection string that authenticates (a password):'
                         ' SELECT rowembed.set_query_connection(''host=... user=... password=...'').';
    END;
    BEGIN
        EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, request);
        LOOP
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS t(answer text, error text)',
                           dblink, link, poll)
                INTO answer, failed;
            EXIT WHEN answer IS NOT NULL OR failed IS NOT NULL;
            IF clock_timestamp() >= deadline THEN
                EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, withdraw);
                RAISE EXCEPTION 'rowembed: no worker answered on the % queue (rowembed.%) within % s',
                    queue, queue, wait
                    USING HINT = format('Start one (rowembed worker, whose --queues include %s),'
                                        ' or give it longer: timeout_seconds or SET'
                                        ' rowembed.query_timeout.', queue);
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

-- Seconds to wait for a worker: the call's, else rowembed.query_timeout, else 5.
CREATE OR REPLACE FUNCTION rowembed._query_timeout(timeout_seconds float8) RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(timeout_seconds,
                    nullif(current_setting('rowembed.query_timeout', true), '')::float8, 5)
$$;

-- The vector of `text` (query instruction included) by `model`: the cached one,
-- else a worker's (_ask_workers). SECURITY DEFINER because dblink needs its
-- owner's right to open the loopback session without a password; the statements
-- are fixed, the arguments literals. EXECUTE: the owner and grant_searcher's roles.
CREATE OR REPLACE FUNCTION rowembed._query_embedding(
    model text, text text, timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    hash bytea := rowembed._text_hash(text);
    cached real[];
    answer text[];
    key text := format('model = %L AND text_hash = %L', model, hash);
BEGIN
    SELECT c.embedding INTO cached FROM rowembed.query_cache AS c
    WHERE c.model = _query_embedding.model AND c.text_hash = hash AND c.error IS NULL;
    IF cached IS NOT NULL THEN
        RETURN cached;
    END IF;
    answer := rowembed._ask_workers(
        format('INSERT INTO rowembed.query_request (model, text_hash, text) VALUES (%L, %L, %L)'
               ' ON CONFLICT DO NOTHING; NOTIFY rowembed, ''query''', model, hash, text),
        -- an error is read once: its row goes as it is read
        format('WITH failed AS (DELETE FROM rowembed.query_cache WHERE %s AND error IS NOT NULL'
               ' RETURNING error) SELECT (SELECT embedding::text FROM rowembed.query_cache'
               ' WHERE %s AND error IS NULL), (SELECT error FROM failed)', key, key),
        format('DELETE FROM rowembed.query_request WHERE %s', key),
        'query', rowembed._query_timeout(timeout_seconds));
    IF answer[2] IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: the worker could not embed the query: %', answer[2];
    END IF;
    RETURN answer[1]::real[];
END
$body$;
REVOKE ALL ON FUNCTION rowembed._query_embedding(text, text, float8) FROM PUBLIC;

-- Scores of (query, passage) pairs by the cross-encoder `model`, in the passages'
-- order, from a worker on the rerank queue. SECURITY DEFINER as _query_embedding.
CREATE OR REPLACE FUNCTION rowembed._rerank_scores(
    model text, query text, passages text[], timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    id uuid := gen_random_uuid();
    answer text[];
BEGIN
    IF coalesce(cardinality(passages), 0) = 0 THEN
        RETURN '{}';
    END IF;
    answer := rowembed._ask_workers(
        format('INSERT INTO rowembed.rerank_request (id, model, query, passages)'
               ' VALUES (%L, %L, %L, %L); NOTIFY rowembed, ''rerank''',
               id, model, query, array_replace(passages, NULL, '')),
        format('DELETE FROM rowembed.rerank_request WHERE id = %L'
               ' AND (scores IS NOT NULL OR error IS NOT NULL) RETURNING scores::text, error', id),
        format('DELETE FROM rowembed.rerank_request WHERE id = %L', id),
        'rerank', rowembed._query_timeout(timeout_seconds));
    IF answer[2] IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: the worker could not rerank: %', answer[2];
    END IF;
    RETURN answer[1]::real[];
END
$body$;
REVOKE ALL ON FUNCTION rowembed._rerank_scores(text, text, text[], float8) FROM PUBLIC;

-- The query vector of `query` for a vectorizer: its model and query instruction,
-- served by the workers (or the cache). For SQL of one's own:
--   ORDER BY embedding <=> rowembed.embed_query('docs', 'key rotation')
CREATE OR REPLACE FUNCTION rowembed.embed_query(
    vectorizer text, query text, timeout_seconds float8 DEFAULT NULL)
RETURNS vector
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(vectorizer);
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'rowembed: the query text is empty';
    END IF;
    RETURN rowembed._query_embedding(v.model, v.query_instruction || query, timeout_seconds)::vector;
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
    RETURN rowembed._rerank_scores(v.rerank_model, query, passages, timeout_seconds);
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
    query_vector vector := rowembed.embed_query(v.name, query, timeout_seconds);
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
