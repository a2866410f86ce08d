-- rowembed 0013: fine-tuning on the workers. rowembed.finetune() records a job
-- and its (query, key) pairs, read once as the caller; a worker of the train
-- queue claims the job (a session advisory lock: the claim dies with its
-- session), trains, and writes its progress and outcome here. status() gains a
-- column for the latest job of each vectorizer.

CREATE TABLE rowembed.training_job (
    id            bigserial PRIMARY KEY,
    vectorizer_id int NOT NULL REFERENCES rowembed.vectorizer (id) ON DELETE CASCADE,
    requested_by  name NOT NULL,
    options       jsonb NOT NULL,   -- FineTuneOptions' fields, as finetune() checked them
    state         text NOT NULL DEFAULT 'waiting'
                  CHECK (state IN ('waiting', 'running', 'done', 'failed')),
    worker        text,
    attempts      int NOT NULL DEFAULT 0,  -- claims: a job that kills its worker is given up
    phase         text,             -- what trains now: model, or reranker
    step          int,
    steps         int,
    loss          real,
    model         text,             -- the new model's directory, once saved
    outcome       jsonb,            -- held-out figures of both models; switched or not
    error         text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX ON rowembed.training_job (vectorizer_id, id);

CREATE TABLE rowembed.training_pair (
    job_id bigint NOT NULL REFERENCES rowembed.training_job (id) ON DELETE CASCADE,
    query  text NOT NULL,
    key    text NOT NULL
);
CREATE INDEX ON rowembed.training_pair (job_id);

-- Its owner and the roles that work a vectorizer (they may update its queue)
-- see its jobs; only rowembed._training_insert() adds one.
ALTER TABLE rowembed.training_job ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_vectorizer ON rowembed.training_job USING (EXISTS (
    SELECT FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id
       AND coalesce(has_table_privilege(z.queue_table, 'UPDATE'), false)));
ALTER TABLE rowembed.training_pair ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_vectorizer ON rowembed.training_pair USING (EXISTS (
    SELECT FROM rowembed.training_job AS j WHERE j.id = job_id));

-- status() gains `training`: a changed return type is a new function.
DROP VIEW IF EXISTS rowembed.vectorizer_status;
DROP FUNCTION IF EXISTS rowembed.status();
