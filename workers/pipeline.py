"""One batch of work for one vectorizer: claim, read, embed, write.

Knows the database module and the model runtime; knows nothing of Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from rowembed.pgplugin.vectorizers import Vectorizer

from . import database as db
from .database import Action, Outcome
from .runtime import Encoded

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What the pipeline needs of a model (runtime.Encoder, or a lazy wrapper)."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> Encoded: ...


@dataclass
class BatchReport:
    claimed: int = 0
    embedded: int = 0
    written: int = 0
    deleted: int = 0
    unchanged: int = 0
    superseded: int = 0  # entries whose row changed again while we worked
    truncated: int = 0
    failed: int = 0
    seconds: float = 0.0

    def add(self, other: BatchReport) -> None:
        for field in self.__dataclass_fields__:
            setattr(self, field, getattr(self, field) + getattr(other, field))


class DimensionMismatch(RuntimeError):
    pass


def run_batch(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    statements: db.QueueStatements,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
) -> BatchReport:
    started = time.monotonic()
    report = BatchReport()
    seqs = db.claim(conn, statements, limit, lease_seconds)
    report.claimed = len(seqs)
    if not seqs:
        return report
    rows = db.read(conn, statements, seqs)
    outcomes: list[Outcome] = []
    to_embed = []
    for row in rows:
        if not row.present or not row.text.strip():
            outcomes.append(Outcome(row.seq, Action.DELETE))
        elif row.stored_hash == row.text_hash:
            outcomes.append(Outcome(row.seq, Action.KEEP))
            report.unchanged += 1
        else:
            to_embed.append(row)
    if to_embed:
        try:
            if encoder.dimensions != vectorizer.dimensions:
                raise DimensionMismatch(
                    f"model {encoder.name} gives {encoder.dimensions} dimensions; vectorizer"
                    f" {vectorizer.name!r} stores {vectorizer.dimensions}"
                )
            encoded = encoder.encode([r.text for r in to_embed])
        except Exception as exc:
            db.record_failure(
                conn,
                statements,
                [r.seq for r in to_embed],
                f"{type(exc).__name__}: {exc}",
                vectorizer.max_attempts,
            )
            report.failed = len(to_embed)
            log.exception("vectorizer %s: embedding %d rows failed", vectorizer.name, len(to_embed))
            to_embed = []
        else:
            report.embedded = len(to_embed)
            report.truncated = encoded.truncated
            outcomes.extend(
                Outcome(r.seq, Action.WRITE, r.text_hash, encoded.vectors[i])
                for i, r in enumerate(to_embed)
            )
    if outcomes:
        result = db.write(conn, statements, outcomes)
        report.written = result.written
        report.deleted = result.deleted
        report.superseded = len(outcomes) - result.completed
    report.seconds = time.monotonic() - started
    return report


def drain(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    time_budget: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[BatchReport, bool]:
    """Run batches until the queue is empty or the time budget is spent.
    Returns the summed report and whether work may remain."""
    statements = db.QueueStatements(vectorizer)
    total = BatchReport()
    deadline = time.monotonic() + time_budget
    while True:
        report = run_batch(
            conn, vectorizer, statements, encoder, limit=limit, lease_seconds=lease_seconds
        )
        total.add(report)
        if report.claimed < limit:
            return total, False
        if time.monotonic() >= deadline or should_stop():
            return total, True
