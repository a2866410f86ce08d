"""Fine-tuning jobs from SQL (rowembed.finetune): the pairs read as the caller
and refused in one line; a claim that dies with its worker's session; a job
that keeps killing its workers given up; each owner's jobs her own."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.training_jobs import (
    claim_training_job,
    finish_training_job,
    record_training_progress,
    start_finetune,
    training_jobs,
    training_jobs_waiting,
    training_pairs,
)

from .test_privileges import Owner, login

Conn = psycopg.Connection[Any]
PAIRS = "SELECT 'question ' || i, (i % 30) + 1 FROM generate_series(1, 40) AS i"


@pytest.fixture
def docs(own_db: Conn) -> str:
    own_db.execute("CREATE TABLE tj_docs (id int PRIMARY KEY, body text, n int)")
    own_db.execute(
        "INSERT INTO tj_docs SELECT i, 'document ' || i, i FROM generate_series(1, 30) i"
    )
    return create_vectorizer(own_db, "tj_docs", ["body"], model="m", dimensions=3).name


def refusal(conn: Conn, name: str, pairs: str) -> str:
    with pytest.raises(psycopg.Error) as raised:
        start_finetune(conn, name, pairs)
    message = raised.value.diag.message_primary or ""
    assert "\n" not in message
    return message


def test_pairs_that_cannot_be_used_are_refused_in_one_line(own_db: Conn, docs: str) -> None:
    assert refusal(own_db, docs, PAIRS + " LIMIT 5") == (
        "rowembed: 5 pairs: fine-tuning needs at least 20"
    )
    assert refusal(own_db, docs, "SELECT body, id + 1000 FROM tj_docs") == (
        "rowembed: 30 keys of the pairs name no row of public.tj_docs (e.g. 1001, 1002, 1003)"
    )
    two_columns = "rowembed: the pairs query must return two columns, the query text and the key"
    for wrong in ("SELECT body, id, n FROM tj_docs", "SELECT body FROM tj_docs",
                  "SELECT id, body FROM tj_docs"):  # fmt: skip
        assert refusal(own_db, docs, wrong).startswith(two_columns), wrong
    for not_a_select in ("DELETE FROM tj_docs RETURNING body, id", "SELECT body, id FROM tj_docs;"
                         " DROP TABLE tj_docs"):  # fmt: skip
        assert refusal(own_db, docs, not_a_select).startswith(
            "rowembed: the pairs query must be one SELECT of (query, key)"
        )
    own_db.execute("CREATE TABLE tj_bare (id int PRIMARY KEY, body text)")
    bare = create_vectorizer(own_db, "tj_bare", ["body"], model="m", dimensions=3,
                             index_method="none")  # fmt: skip
    assert "has no vector index" in refusal(own_db, bare.name, PAIRS)
    assert own_db.execute("SELECT count(*) FROM tj_docs").fetchone() == (30,)
    assert training_jobs(own_db) == []

    job = start_finetune(own_db, docs, PAIRS + ";", negatives=1)
    assert len(training_pairs(own_db, job)) == 40
    [only] = training_jobs(own_db)
    assert (only.id, only.state, only.vectorizer) == (job, "waiting", docs)
    assert "waits for a worker of the train queue" in only.status
    status = own_db.execute("SELECT training FROM rowembed.status() WHERE name = %s", [docs])
    assert status.fetchone() == (only.status,)


def test_a_claim_dies_with_its_session_and_a_job_that_kills_workers_is_given_up(
    own_db: Conn, docs: str
) -> None:
    job = start_finetune(own_db, docs, PAIRS)
    url = own_db.info.dsn
    for attempt in (1, 2, 3):
        assert training_jobs_waiting(own_db)
        with connect(url) as worker:
            claimed = claim_training_job(worker, f"w{attempt}")
            assert claimed is not None and (claimed.id, claimed.attempts) == (job, attempt)
            with connect(url) as other:  # held: nobody else gets it
                assert claim_training_job(other, "other") is None
            assert not training_jobs_waiting(own_db)
            record_training_progress(worker, job, "model", 3, 10, 0.5)
            assert training_jobs(own_db)[0].status == f"job {job}: model step 3 of 10, loss 0.500"
        # The worker's session ended mid-job: the job is free again.
        assert "waits for a worker" in training_jobs(own_db)[0].status
    with connect(url) as worker:
        assert claim_training_job(worker, "w4") is None
    [given_up] = training_jobs(own_db)
    assert given_up.state == "failed"
    assert given_up.error == "its worker stopped 3 times while it trained (out of memory?)"
    assert not training_jobs_waiting(own_db)

    done = start_finetune(own_db, docs, PAIRS)
    with connect(url) as worker:
        assert claim_training_job(worker, "w") is not None
        outcome = {"base": {"recall": 0.5, "mrr": 0.4}, "tuned": {"recall": 0.7, "mrr": 0.6}}
        finish_training_job(worker, done, model="/models/job", outcome=outcome)
        assert claim_training_job(worker, "w") is None  # done: never claimed again
    assert training_jobs(own_db)[0].status == (
        f"job {done}: done: recall@10 0.5 -> 0.7, MRR@10 0.4 -> 0.6; model /models/job"
    )


def test_a_job_is_its_vectorizers_owners_and_workers_only(
    own_db: Conn, postgres: EmbeddedPostgres
) -> None:
    suffix = own_db.info.dbname
    alice, mallory = (Owner(own_db, postgres, f"{who}_{suffix}") for who in ("alice", "mallory"))
    own_db.execute(
        sql.SQL("INSERT INTO {} SELECT i, 'doc ' || i FROM generate_series(3, 30) i").format(
            sql.Identifier(alice.table)
        )
    )
    pairs = f"SELECT 'q' || id, id FROM {alice.table}"
    worker = f"alice_worker_{suffix}"
    own_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(worker)))
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [worker, alice.vectorizer.name])
    # Mallory may read alice's table: she still may not train alice's model.
    own_db.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.Identifier(alice.table), sql.Identifier(mallory.role)
        )
    )
    with connect(mallory.url) as conn:
        assert refusal(conn, alice.vectorizer.name, pairs).startswith("rowembed: no vectorizer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not one of"):
            conn.execute(  # the writer itself, called as a creator may
                "SELECT rowembed._training_insert(%s, '{}', ARRAY['q'], ARRAY['1'])",
                [alice.vectorizer.id],
            )
    with connect(alice.url) as conn:
        job = start_finetune(conn, alice.vectorizer.name, pairs)
        assert [j.id for j in training_jobs(conn)] == [job]
    with connect(mallory.url) as conn:
        assert training_jobs(conn) == []
        assert conn.execute("SELECT count(*) FROM rowembed.training_pair").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE rowembed.training_job SET options = '{}'")
        assert claim_training_job(conn, "mallory") is None
    with connect(login(postgres, own_db, worker)) as conn:
        claimed = claim_training_job(conn, "alice's worker")
        assert claimed is not None and claimed.id == job
        assert len(training_pairs(conn, job)) == 30
