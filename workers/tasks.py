"""Celery tasks: thin wrappers around the pipeline. Heavy imports (torch) happen
inside the task, after the pool has forked, so CUDA initialises in the child."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict
from typing import Any

import psycopg

from .celery_app import BACKGROUND, EMBED_QUEUE, URGENT, app, waiting_messages
from .state import worker_state

log = logging.getLogger(__name__)


@app.task(name="rowembed.embed", bind=True, max_retries=None, ignore_result=True)
def embed(self: Any, vectorizer_id: int) -> dict[str, Any]:
    """Drain vectorizer `vectorizer_id`'s queue for a while; hand the rest on."""
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
            report, more = drain(
                conn,
                reader,
                vectorizer,
                state.encoder(vectorizer.model),
                limit=state.batch_rows(),
                lease_seconds=state.settings.lease_seconds,
                time_budget=state.settings.task_seconds,
                worker=f"{socket.gethostname()}:{os.getpid()}",
                # Hand back between batches when another table has work waiting
                # (its live changes must not wait for this table's backfill).
                should_stop=lambda: _other_work_waiting(reader, vectorizer_id),
            )
            urgent = more and _changes_waiting(conn, vectorizer_id)
    except psycopg.OperationalError as exc:
        # The database is down or restarting; claims die with the session, so
        # nothing is lost. Back off and try again (the sweep would re-send too).
        delay = min(30, 2 ** min(self.request.retries, 5))
        log.warning("database unavailable (%s); retrying in %ss", _first_line(exc), delay)
        raise self.retry(countdown=delay) from exc
    if more:
        self.apply_async((vectorizer_id,), priority=URGENT if urgent else BACKGROUND)
    if report.claimed:
        log.info("vectorizer %s: %s", vectorizer.name, report)
    return asdict(report)


@app.task(name="rowembed.rerank")
def rerank(model: str, query: str, passages: list[str], sigmoid: bool = False) -> list[float]:
    """Cross-encoder scores of (query, passage) pairs, in the passages' order."""
    return worker_state().reranker(model).score(query, passages, sigmoid=sigmoid).scores.tolist()


@app.task(name="rowembed.embed_query")
def embed_query(model: str, text: str) -> list[float]:
    """The vector of one text; the caller adds the query instruction."""
    return worker_state().encoder(model).encode([text]).vectors[0].tolist()


def _other_work_waiting(conn: psycopg.Connection[Any], vectorizer_id: int) -> bool:
    """Hints wait in the broker, and another table has live changes a worker may
    claim. Hints for this same table (the sweep sends them while its backlog
    lasts) are no reason to stop, nor is another table's backfill: each would
    cost a hand-back per batch (another table's backlog gets its turn when this
    task's time budget is spent)."""
    if waiting_messages(app, EMBED_QUEUE) == 0:
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM rowembed.vectorizers_with_work() AS w"
        " WHERE w.id <> %s AND w.changes)",
        [vectorizer_id],
    ).fetchone()
    return bool(row and row[0])


def _changes_waiting(conn: psycopg.Connection[Any], vectorizer_id: int) -> bool:
    """Whether what this task leaves behind includes live changes (then its
    follow-up hint is urgent too)."""
    row = conn.execute(
        "SELECT changes FROM rowembed.vectorizers_with_work() WHERE id = %s", [vectorizer_id]
    ).fetchone()
    return bool(row and row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
