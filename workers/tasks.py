"""Celery tasks: thin wrappers around the pipeline and the models. The names on
the wire (`rowembed.embed`, ...) stay as they are; the functions say they are
tasks. Heavy imports (torch) happen inside the task, after the pool has forked,
so CUDA initialises in the child."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import psycopg
from celery.exceptions import SoftTimeLimitExceeded

from . import policy
from .celery_app import app
from .state import worker_state

log = logging.getLogger(__name__)


@app.task(name="rowembed.embed", bind=True, max_retries=None, ignore_result=True)
def embed_task(self: Any, vectorizer_id: int) -> dict[str, Any]:
    """A hint: drain vectorizer `vectorizer_id`'s queue for a while; hand the rest on."""
    from rowembed.pgplugin.vectorizers import VectorizerNotFound, get_vectorizer

    from .pipeline import drain

    state = worker_state()
    try:
        with state.connections() as (conn, reader):
            try:
                vectorizer = get_vectorizer(conn, vectorizer_id)
            except VectorizerNotFound:
                log.info("vectorizer %s no longer exists; hint dropped", vectorizer_id)
                return {}
            if vectorizer.problem:
                why = vectorizer.problem
                log.warning("vectorizer %s is broken (%s); hint dropped", vectorizer.name, why)
                return {}
            claim_size = state.claim_size()
            limit, started = claim_size.rows, time.monotonic()
            try:
                report, more = drain(
                    conn,
                    reader,
                    vectorizer,
                    state.encoder(vectorizer.model),
                    limit=limit,
                    lease_seconds=state.settings.lease,
                    time_budget=state.settings.task_seconds,
                    max_characters=claim_size.characters,
                    worker=state.name,
                    # Between batches: another table's live changes must not wait.
                    should_stop=lambda: policy.should_hand_back(app, reader, vectorizer_id),
                    abort_on=(SoftTimeLimitExceeded,),
                    progress=state.progress,
                )
            except SoftTimeLimitExceeded:
                # A slow or busy machine: the claims were given back; smaller ones next.
                claim_size.timed_out()
                log.warning(
                    "vectorizer %s: a batch met the soft time limit; claims of %d rows now",
                    vectorizer.name,
                    claim_size.rows,
                )
                self.apply_async((vectorizer_id,), priority=policy.hint_priority(app, False))
                return {}
            elapsed = time.monotonic() - started
            if report.claimed >= limit:  # a measure of throughput, not of one row's latency
                claim_size.observe(report.claimed, elapsed)
            if report.characters:
                claim_size.observe(0, elapsed, report.characters)
            urgent = more and policy.follow_up_is_urgent(conn, vectorizer_id)
    except psycopg.OperationalError as exc:
        # The database is down or restarting; claims die with the session, so
        # nothing is lost. Back off and try again (the sweep would re-send too).
        delay = min(30, 2 ** min(self.request.retries, 5))
        log.warning("database unavailable (%s); retrying in %ss", _first_line(exc), delay)
        raise self.retry(countdown=delay) from exc
    if more:
        self.apply_async((vectorizer_id,), priority=policy.hint_priority(app, urgent))
    if report.claimed:
        log.info("vectorizer %s: %s", vectorizer.name, report)
    return asdict(report)


@app.task(name="rowembed.rerank")
def rerank_task(model: str, query: str, passages: list[str], sigmoid: bool = False) -> list[float]:
    """Cross-encoder scores of (query, passage) pairs, in the passages' order."""
    return worker_state().reranker(model).score(query, passages, sigmoid=sigmoid).scores.tolist()


@app.task(name="rowembed.embed_query")
def embed_query_task(model: str, text: str) -> list[float]:
    """The vector of one text; the caller adds the query instruction."""
    return worker_state().encoder(model).encode([text]).vectors[0].tolist()


@app.task(name="rowembed.answer_queries", ignore_result=True)
def answer_queries_task() -> int:
    """Query texts SQL callers wait for (rowembed.search_text): embed them into the cache."""
    from .query_answers import answer_queries

    state = worker_state()
    with state.connections() as (conn, _):
        return answer_queries(conn, state.encoder, state.settings.query_cache_rows)


@app.task(name="rowembed.answer_reranks", ignore_result=True)
def answer_reranks_task() -> int:
    """Rerank requests SQL callers wait for (rowembed.rerank): score them."""
    from .query_answers import answer_reranks

    state = worker_state()
    with state.connections() as (conn, _):
        return answer_reranks(conn, state.reranker)


# A job takes minutes to hours: limits of its own (None would mean the app's
# seconds), and acknowledged on receipt (a redelivery would start it twice; a
# job whose worker died is free again, and the dispatcher's sweep sends another hint).
TRAINING_HOURS = 48


@app.task(
    name="rowembed.train", ignore_result=True, acks_late=False,
    soft_time_limit=TRAINING_HOURS * 3600 - 60, time_limit=TRAINING_HOURS * 3600,
)  # fmt: skip
def train_task() -> int:
    """Fine-tuning jobs wait (rowembed.finetune): run them, one after another."""
    from .training_jobs import run_training_jobs

    state = worker_state()
    return run_training_jobs(state.settings, state.name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
