"""rowembed.finetune() served by real workers of the train queue: progress in
status(), a worker killed mid-job and the job finished by another, the model
and the reranker saved where ROWEMBED_TRAINED_MODELS says, switched in through
alter_vectorizer with searches, reranks and the application's writes going on."""

from __future__ import annotations

from pathlib import Path

import pytest

from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.sample_pairs import jargon_pairs
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, get_vectorizer
from rowembed.pgplugin.status import status
from rowembed.pgplugin.training_jobs import JobStatus, start_finetune, training_jobs

from ..conftest import MODEL, Stack, wait_until


@pytest.mark.soak
def test_a_training_job_survives_its_worker_and_switches_the_model_in(
    stack: Stack, tmp_path: Path, cross_encoder_dir: Path
) -> None:
    trained = tmp_path / "trained"
    env = {"ROWEMBED_TRAINED_MODELS": str(trained), "ROWEMBED_DEVICE": "cpu"}
    args = ("--concurrency", "1", "--queues", "embed,query,rerank,train")
    first = stack.worker("first", env=env, args=args)
    texts = [d.text for d in stdlib_docstrings(240)]
    with connect(stack.pg.url) as conn:
        create_text_table(conn, "tj_docs", texts)
        conn.execute("CREATE TABLE tj_pairs (query text, doc int)")
        with conn.cursor().copy("COPY tj_pairs FROM STDIN") as copy:
            for pair in jargon_pairs(texts):
                copy.write_row(pair)
        v = create_vectorizer(
            conn, "tj_docs", ["body"], model=MODEL, rerank_model=str(cross_encoder_dir)
        )
        wait_until(lambda: status(conn, v.name)[0].pending == 0, timeout=180)

        job = start_finetune(
            conn, v.name, "SELECT query, doc FROM tj_pairs", negatives=1, learning_rate=5e-5,
            switch_if_better=True, rerank=True, max_passage_tokens=64, rerank_depth=20,
        )  # fmt: skip

        def latest() -> JobStatus:
            return next(j for j in training_jobs(conn) if j.id == job)

        # Progress, as status() shows it; then the worker is lost mid-job.
        wait_until(lambda: latest().step is not None, timeout=180, interval=0.2)
        line = status(conn, v.name)[0].training or ""
        assert line.startswith(f"job {job}: model step ") and ", loss " in line, line
        first.kill()
        wait_until(lambda: "waits for a worker" in latest().status, timeout=30)
        stack.worker("second", env=env, args=args)
        wait_until(lambda: latest().state in ("done", "failed"), timeout=300, interval=0.5)
        done = latest()
        assert done.state == "done", done.error
        assert done.outcome is not None
        assert done.outcome["tuned"]["mrr"] > done.outcome["base"]["mrr"], done.outcome
        # The second attempt's own directory: the first may have saved one.
        assert done.model == str((trained / f"job-{job}-tj_docs.2").resolve())
        assert (Path(done.model) / "config.json").exists()
        reranker = Path(done.model + "-reranker")
        assert done.outcome["rerank"]["model"] == str(reranker)
        assert (reranker / "config.json").exists()
        # Its base has an untrained head (conftest): the tuned one must do better.
        assert done.outcome["rerank"]["tuned"]["mrr"] > done.outcome["rerank"]["base"]["mrr"]
        assert done.status.endswith("switched: rebuilding as tj_docs.next"), done.status
        attempts = conn.execute("SELECT attempts FROM rowembed.training_job WHERE id = %s", [job])
        assert attempts.fetchone() == (2,)

        # The rollout: the workers embed with the new model, the switch comes,
        # and the application's writes and searches go on through it.
        query = (
            "SELECT count(*) FROM rowembed.search_text(NULL::tj_docs, 'a gromp of vraks', 5, -1)"
        )

        def switched() -> bool:
            conn.execute("UPDATE tj_docs SET body = body || '.' WHERE id = 1")
            assert conn.execute(query).fetchone() == (5,)
            return get_vectorizer(conn, v.name).model == done.model

        wait_until(switched, timeout=300, interval=0.5)
        assert get_vectorizer(conn, v.name).rerank_model == str(reranker)
        scores = conn.execute(
            "SELECT rowembed.rerank('tj_docs', 'a gromp', ARRAY['a gromp of vraks', 'chronk'])"
        ).fetchone()
        assert scores is not None and len(scores[0]) == 2
        conn.execute("DELETE FROM tj_docs WHERE id = 2")
        conn.execute("INSERT INTO tj_docs VALUES (100000, 'a snerp dirkle of quaxes')")
        wait_until(lambda: status(conn, v.name)[0].pending == 0, timeout=120)
        assert conn.execute(query).fetchone() == (5,)
