-- Fine-tuning on the workers: rowembed.finetune() reads the pairs as its caller
-- and records a job; a worker of the train queue claims it, reports its
-- progress and its outcome; status() and training_jobs() show them.

-- Records a job and its pairs for the session's vectorizer. SECURITY DEFINER:
-- jobs are written here only; nothing is built from the caller's data.
CREATE OR REPLACE FUNCTION rowembed._training_insert(
    vectorizer_id int, options jsonb, queries text[], keys text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $body$
DECLARE
    v rowembed.vectorizer;
    job bigint;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = _training_insert.vectorizer_id;
    IF NOT FOUND OR NOT rowembed._session_is(v.owner) THEN
        RAISE EXCEPTION 'rowembed: vectorizer % is not one of %''s', vectorizer_id, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO rowembed.training_job (vectorizer_id, requested_by, options)
    VALUES (v.id, session_user, options) RETURNING id INTO job;
    INSERT INTO rowembed.training_pair (job_id, query, key)
    SELECT job, u.q, u.k FROM ROWS FROM (pg_catalog.unnest(queries), pg_catalog.unnest(keys)) AS u(q, k);
    PERFORM pg_catalog.pg_notify('rowembed', 'train');
    RETURN job;
END
$body$;
REVOKE ALL ON FUNCTION rowembed._training_insert(int, jsonb, text[], text[]) FROM PUBLIC;

-- Fine-tune vectorizer `vectorizer`'s model on the pairs `pairs` gives (one
-- SELECT of (query text, key of a relevant source row)), on a worker of the
-- train queue; returns the job's id (rowembed.training_jobs(), status()).
-- The pairs are read now, as the caller, their names resolved in the caller's
-- search_path (the default, taken where the call is written: this function's
-- own is pinned); the rest is checked by the worker.
CREATE OR REPLACE FUNCTION rowembed.finetune(
    vectorizer text,
    pairs text,
    negatives int DEFAULT 3,
    epochs int DEFAULT 1,
    batch_size int DEFAULT 16,
    learning_rate float8 DEFAULT 2e-5,
    held_out float8 DEFAULT 0.2,
    eval_rows int DEFAULT 20000,
    switch_if_better boolean DEFAULT false,
    rerank boolean DEFAULT false,
    max_passage_tokens int DEFAULT 256,
    rerank_depth int DEFAULT 100,
    search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS bigint
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(vectorizer);
    statement text := pg_catalog.rtrim(pg_catalog.btrim(pairs), '; ');
    query_type text;
    queries text[];
    keys text[];
    missing text[];
    wide boolean := true;
BEGIN
    PERFORM pg_catalog.set_config('search_path', finetune.search_path, true);
    IF v.index_method = 'none' THEN
        RAISE EXCEPTION 'rowembed: % has no vector index (index_method none) to mine negatives from',
            v.name;
    ELSIF pg_catalog.cardinality(v.pk_columns) <> 1 THEN
        RAISE EXCEPTION 'rowembed: %: fine-tuning needs a source key of one column', v.name;
    ELSIF negatives < 0 OR epochs < 1 OR batch_size < 2 OR learning_rate <= 0
          OR eval_rows < 1 OR NOT (held_out > 0 AND held_out < 1) OR max_passage_tokens < 8
          OR rerank_depth < 10 THEN
        RAISE EXCEPTION 'rowembed: negatives >= 0, epochs >= 1, batch_size >= 2,'
            ' learning_rate > 0, eval_rows >= 1, 0 < held_out < 1, max_passage_tokens >= 8'
            ' and rerank_depth >= 10';
    END IF;
    BEGIN
        -- Three names fit only a query of three columns or more: two are wanted.
        EXECUTE pg_catalog.format('SELECT FROM (%s) AS p(query, key, more) LIMIT 0', statement);
    EXCEPTION
        WHEN invalid_column_reference THEN wide := false;
        WHEN syntax_error THEN
            RAISE EXCEPTION 'rowembed: the pairs query must be one SELECT of (query, key): %',
                SQLERRM;
    END;
    BEGIN
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.pg_typeof(p.query)::text FROM (%s) AS p(query, key) LIMIT 1',
            statement) INTO query_type;
    EXCEPTION WHEN invalid_column_reference THEN
        wide := true;  -- one column
    END;
    IF wide OR query_type NOT IN ('text', 'character varying', 'character') THEN
        RAISE EXCEPTION 'rowembed: the pairs query must return two columns, the query text and'
            ' the key of a relevant row of %', v.source;
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(p.query::text), pg_catalog.array_agg(p.key::text)'
        '  FROM (%s) AS p(query, key)'
        ' WHERE pg_catalog.btrim(p.query::text) <> '''' AND p.key IS NOT NULL', statement)
        INTO queries, keys;
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(m.k) FROM (SELECT k FROM pg_catalog.unnest($1) AS k'
        ' EXCEPT SELECT %I::text FROM %s ORDER BY 1) AS m', v.pk_columns[1], v.source)
        INTO missing USING keys;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: % keys of the pairs name no row of % (e.g. %)',
            pg_catalog.cardinality(missing), v.source,
            pg_catalog.array_to_string(missing[1:3], ', ');
    ELSIF coalesce(pg_catalog.cardinality(queries), 0) < 20 THEN
        RAISE EXCEPTION 'rowembed: % pairs: fine-tuning needs at least 20',
            coalesce(pg_catalog.cardinality(queries), 0);
    END IF;
    RETURN rowembed._training_insert(v.id, pg_catalog.jsonb_build_object(
        'negatives', negatives, 'epochs', epochs, 'batch_size', batch_size,
        'learning_rate', learning_rate, 'held_out', held_out, 'eval_rows', eval_rows,
        'switch_if_better', switch_if_better, 'rerank', rerank,
        'max_passage_tokens', max_passage_tokens, 'rerank_depth', rerank_depth), queries, keys);
END
$body$;

-- Whether job `job`'s worker holds it now.
CREATE OR REPLACE FUNCTION rowembed._training_held(job bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT job::int IN (SELECT rowembed._lock_holders('training'))
$$;

-- A worker gives up a job that was claimed this often without finishing: it
-- killed its workers (out of memory, most likely).
CREATE OR REPLACE FUNCTION rowembed._training_max_attempts() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 3 $$;

-- The next job for this session (a worker of the train queue): waiting, or
-- running with no worker holding it (its worker died), of a vectorizer the
-- role works. Held by this session (an advisory lock) until
-- _training_finish() or the session's end.
CREATE OR REPLACE FUNCTION rowembed.claim_training_job(worker text)
RETURNS SETOF rowembed.training_job
LANGUAGE plpgsql AS $body$
DECLARE
    j rowembed.training_job;
BEGIN
    FOR j IN SELECT * FROM rowembed.training_job AS t
              WHERE t.state IN ('waiting', 'running') ORDER BY t.id LOOP
        CONTINUE WHEN NOT pg_try_advisory_lock(rowembed._lock_class('training'), j.id::int);
        IF j.attempts >= rowembed._training_max_attempts() THEN
            UPDATE rowembed.training_job AS t
               SET state = 'failed', finished_at = now(), updated_at = now(),
                   error = format('its worker stopped %s times while it trained (out of memory?)',
                                  j.attempts)
             WHERE t.id = j.id;
            PERFORM pg_advisory_unlock(rowembed._lock_class('training'), j.id::int);
            CONTINUE;
        END IF;
        RETURN QUERY UPDATE rowembed.training_job AS t
           SET state = 'running', worker = claim_training_job.worker,
               attempts = t.attempts + 1, phase = NULL, step = NULL, steps = NULL, loss = NULL,
               updated_at = now()
         WHERE t.id = j.id RETURNING t.*;
        RETURN;
    END LOOP;
END
$body$;

-- A claimed job's progress: what trains (model, reranker), after `step` of
-- `steps` optimizer steps, the loss.
CREATE OR REPLACE FUNCTION rowembed.training_progress(
    job bigint, phase text, step int, steps int, loss real)
RETURNS void
LANGUAGE sql AS $$
    UPDATE rowembed.training_job AS t
       SET phase = training_progress.phase, step = training_progress.step,
           steps = training_progress.steps, loss = training_progress.loss, updated_at = now()
     WHERE t.id = training_progress.job
$$;

-- A claimed job's end: done (its model, the figures) or failed (why); the
-- session lets it go.
CREATE OR REPLACE FUNCTION rowembed.training_finish(
    job bigint, model text, outcome jsonb, error text)
RETURNS void
LANGUAGE sql AS $$
    UPDATE rowembed.training_job AS t
       SET state = CASE WHEN training_finish.error IS NULL THEN 'done' ELSE 'failed' END,
           model = training_finish.model, outcome = training_finish.outcome,
           error = training_finish.error, finished_at = now(), updated_at = now()
     WHERE t.id = training_finish.job;
    SELECT pg_advisory_unlock(rowembed._lock_class('training'), job::int);
$$;

-- Whether a job waits for a worker of the train queue (the dispatcher's sweep).
CREATE OR REPLACE FUNCTION rowembed.training_jobs_waiting() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM rowembed.training_job AS t
                    WHERE t.state = 'waiting'
                       OR (t.state = 'running' AND NOT rowembed._training_held(t.id)))
$$;

-- One line on job `j`, for status().
CREATE OR REPLACE FUNCTION rowembed._training_line(j rowembed.training_job) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('job %s: ', j.id) || CASE
        WHEN j.state = 'waiting' OR (j.state = 'running' AND NOT rowembed._training_held(j.id))
            THEN 'waits for a worker of the train queue (rowembed worker --queues train)'
        WHEN j.state = 'running' AND j.steps IS NULL THEN 'is preparing (hard negatives)'
        WHEN j.state = 'running' AND j.step >= j.steps
            THEN format('%s trained, %s steps; evaluating', j.phase, j.steps)
        WHEN j.state = 'running'
            THEN format('%s step %s of %s, loss %s', j.phase, j.step, j.steps,
                        round(j.loss::numeric, 3))
        WHEN j.state = 'failed' THEN 'failed: ' || j.error
        ELSE format('done: recall@10 %s -> %s, MRR@10 %s -> %s; %s',
                    j.outcome #>> '{base,recall}', j.outcome #>> '{tuned,recall}',
                    j.outcome #>> '{base,mrr}', j.outcome #>> '{tuned,mrr}',
                    coalesce(j.outcome ->> 'switch', 'model ' || j.model)) END
$$;

-- The session's jobs (those of the vectorizers it owns or works), newest first.
CREATE OR REPLACE FUNCTION rowembed.training_jobs()
RETURNS TABLE (id bigint, vectorizer text, state text, step int, steps int, loss real,
               model text, outcome jsonb, error text, requested_by name,
               requested_at timestamptz, finished_at timestamptz, status text)
LANGUAGE sql STABLE AS $$
    SELECT t.id, z.name, t.state, t.step, t.steps, t.loss, t.model, t.outcome, t.error,
           t.requested_by, t.requested_at, t.finished_at, rowembed._training_line(t)
      FROM rowembed.training_job AS t JOIN rowembed.vectorizer AS z ON z.id = t.vectorizer_id
     ORDER BY t.id DESC
$$;

-- Roles granted before fine-tuning existed get what it needs: creators (who may
-- write the catalog) start jobs and read them; workers claim and report them.
DO $grants$
DECLARE
    role text;
BEGIN
    FOR role IN SELECT DISTINCT quote_ident(a.grantee::regrole::text) FROM pg_proc AS p,
                       aclexplode(p.proacl) AS a
                 WHERE p.oid = 'rowembed._catalog_insert(jsonb)'::regprocedure
                   AND a.grantee NOT IN (0, p.proowner) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION rowembed._training_insert(int, jsonb, text[],'
                       ' text[]) TO %s', role);
        EXECUTE format('GRANT SELECT ON rowembed.training_job, rowembed.training_pair TO %s',
                       role);
    END LOOP;
    FOR role IN SELECT DISTINCT quote_ident(a.grantee::regrole::text) FROM pg_proc AS p,
                       aclexplode(p.proacl) AS a
                 WHERE p.oid = 'rowembed._record_batch(jsonb)'::regprocedure
                   AND a.grantee NOT IN (0, p.proowner) LOOP
        EXECUTE format('GRANT SELECT, UPDATE ON rowembed.training_job TO %s', role);
        EXECUTE format('GRANT SELECT ON rowembed.training_pair TO %s', role);
    END LOOP;
END
$grants$;
