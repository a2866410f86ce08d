-- Query embeddings for SQL callers: a text becomes a vector on the workers'
-- query queue, so that psql alone can search by text (search_text, embed_query).
--
-- The caller's transaction cannot hand a request to a worker (its writes are
-- invisible until it commits, and NOTIFY waits for the commit too), so the
-- request goes through a loopback dblink session: inserted and notified there
-- at once; the dispatcher hears the NOTIFY and sends a task to the query queue;
-- a worker embeds the text into rowembed.query_cache; the caller polls the
-- cache over the same loopback session (its own snapshot may be older) until
-- the answer or its timeout. A cached text never reaches a worker.

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
-- the current role (the owner, in _query_embedding).
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
-- role with INSERT, DELETE on rowembed.query_request and SELECT, DELETE on
-- rowembed.query_cache. Only the owner of rowembed's tables can.
CREATE OR REPLACE FUNCTION rowembed.set_query_connection(conninfo text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rowembed.query_connection;
    INSERT INTO rowembed.query_connection (conninfo)
    SELECT set_query_connection.conninfo WHERE set_query_connection.conninfo IS NOT NULL;
$$;

-- The vector of `text` (query instruction included) by `model`: the cached one,
-- else a worker's, waiting at most timeout_seconds (NULL: the setting
-- rowembed.query_timeout, else 5). SECURITY DEFINER because dblink needs its
-- owner's right to open the loopback session without a password; it runs fixed
-- statements with the arguments as literals, on a session of its own that it
-- closes before it returns (an open one would outlive it in the caller's
-- backend). EXECUTE: the owner and roles given grant_searcher.
CREATE OR REPLACE FUNCTION rowembed._query_embedding(
    model text, text text, timeout_seconds float8 DEFAULT NULL)
RETURNS real[]
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    hash bytea := rowembed._text_hash(text);
    answer real[];
    failed text;
    dblink name := rowembed._dblink_schema();
    link text := format('rowembed_query_%s_%s', pg_backend_pid(), floor(random() * 1e9));
    wait float8 := coalesce(timeout_seconds,
                            nullif(current_setting('rowembed.query_timeout', true), '')::float8, 5);
    deadline timestamptz;
    pause float8 := 0.001;
    poll text;
BEGIN
    SELECT c.embedding INTO answer FROM rowembed.query_cache AS c
    WHERE c.model = _query_embedding.model AND c.text_hash = hash AND c.error IS NULL;
    IF answer IS NOT NULL THEN
        RETURN answer;
    END IF;
    IF dblink IS NULL THEN
        RAISE EXCEPTION 'rowembed: searching by text from SQL needs the dblink extension'
            USING HINT = 'CREATE EXTENSION dblink (a superuser), then rowembed migrate.';
    END IF;
    IF NOT wait > 0 THEN
        RAISE EXCEPTION 'rowembed: timeout_seconds must be positive, not %', wait;
    END IF;
    deadline := clock_timestamp() + make_interval(secs => wait);
    poll := format('SELECT embedding, error FROM rowembed.query_cache'
                   ' WHERE model = %L AND text_hash = %L', model, hash);
    EXECUTE format('SELECT %I.dblink_connect(%L, %L)', dblink, link, rowembed._loopback_conninfo());
    BEGIN
        EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, format(
            'INSERT INTO rowembed.query_request (model, text_hash, text) VALUES (%L, %L, %L)'
            ' ON CONFLICT DO NOTHING; NOTIFY rowembed, ''query''', model, hash, text));
        LOOP
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS t(embedding real[], error text)',
                           dblink, link, poll)
                INTO answer, failed;
            EXIT WHEN answer IS NOT NULL OR failed IS NOT NULL;
            IF clock_timestamp() >= deadline THEN
                EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, format(
                    'DELETE FROM rowembed.query_request WHERE model = %L AND text_hash = %L',
                    model, hash));
                RAISE EXCEPTION 'rowembed: no worker answered on the query queue (rowembed.query) within % s', wait
                    USING HINT = 'Start one (rowembed worker, whose --queues include query),'
                                 ' or give it longer: timeout_seconds or SET rowembed.query_timeout.';
            END IF;
            PERFORM pg_sleep(pause);
            pause := least(pause * 2, 0.02);
        END LOOP;
        IF failed IS NOT NULL THEN
            EXECUTE format('SELECT %I.dblink_exec(%L, %L)', dblink, link, format(
                'DELETE FROM rowembed.query_cache WHERE model = %L AND text_hash = %L'
                ' AND error IS NOT NULL', model, hash));
        END IF;
        EXECUTE format('SELECT %I.dblink_disconnect(%L)', dblink, link);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        EXECUTE format('SELECT %I.dblink_disconnect(%L)', dblink, link);
        RAISE;
    END;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: the worker could not embed the query: %', failed;
    END IF;
    RETURN answer;
END
$body$;
REVOKE ALL ON FUNCTION rowembed._query_embedding(text, text, float8) FROM PUBLIC;

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

-- Rows of a table most similar to a query text: search() with the text embedded
-- by the vectorizer's model on the workers (see embed_query).
-- Usage: SELECT similarity, (item).* FROM rowembed.search_text(NULL::docs, 'key rotation', 10)
CREATE OR REPLACE FUNCTION rowembed.search_text(
    source anyelement,
    query text,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    timeout_seconds float8 DEFAULT NULL)
RETURNS TABLE (similarity float8, item anyelement)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
BEGIN
    RETURN QUERY SELECT * FROM rowembed.search(
        source, rowembed.embed_query(v.name, query, timeout_seconds), k, min_similarity,
        v.name, filter);
END
$body$;
