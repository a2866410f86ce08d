"""Backfills: queueing a vectorizer's existing rows, chunk by chunk, behind live changes."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ._call import call, scalar
from .queue import owner_transaction

log = logging.getLogger(__name__)

# A backfill step's statements at most (a chunk takes well under a second): one
# vectorizer's slow step (a huge row, its owner's trigger) never holds up the
# dispatcher's loop for the others.
STEP_SECONDS = 30.0


def start_backfill(conn: psycopg.Connection[Any], name: str) -> str:
    """'started', or 'already running'."""
    return str(scalar(conn, "start_backfill", name=name))


def cancel_backfill(conn: psycopg.Connection[Any], name: str) -> int:
    """Stops it; returns the queued backfill rows dropped."""
    return int(scalar(conn, "cancel_backfill", name=name))


def step_backfill(conn: psycopg.Connection[Any], vectorizer_id: int, chunk: int) -> int:
    """Queue the next chunk of a running backfill; returns the rows queued."""
    return int(scalar(conn, "backfill_step", vectorizer_id=vectorizer_id, chunk_size=chunk))


def top_up_backfills(
    conn: psycopg.Connection[Any], chunk: int, step_seconds: float = STEP_SECONDS
) -> None:
    """Top up each running backfill's queued backlog to about three chunks (a few
    chunk-sized transactions per call): the queue stays short, and live changes,
    queued at a higher priority, stay first. One backfill's failure (its table
    altered meanwhile, a step over `step_seconds`) is logged and the others go on."""
    for (vectorizer_id,) in call(conn, "backfills_to_step").fetchall():
        try:
            _top_up(conn, vectorizer_id, chunk, step_seconds)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            log.warning("backfill of vectorizer %s: %s", vectorizer_id, str(exc).strip())


def _top_up(conn: psycopg.Connection[Any], vectorizer_id: int, chunk: int, seconds: float) -> None:
    run_as = scalar(conn, "_run_as", vectorizer_id=vectorizer_id)
    for _ in range(10):
        with owner_transaction(conn, run_as, seconds):  # her tables: as her, bounded
            backlog = scalar(conn, "backfill_backlog", vectorizer_id=vectorizer_id, cap=3 * chunk)
            if backlog >= 3 * chunk:
                break
            step_backfill(conn, vectorizer_id, chunk)
        state = conn.execute(
            "SELECT state FROM rowembed.backfill WHERE vectorizer_id = %s", [vectorizer_id]
        ).fetchone()
        if state != ("running",):
            break
