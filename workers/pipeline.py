"""One batch of work for one vectorizer: claim, read, embed, write.

Knows the database module and the model runtime; knows nothing of Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psycopg

from rowembed.pgplugin.vectorizers import Vectorizer

from . import database as db
from .database import Action, Outcome
from .runtime import Encoded
from .runtime.isolate import DimensionMismatch, encode_isolating

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
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: BatchReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def run_batch(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    statements: db.QueueStatements,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    worker: str = "",
) -> BatchReport:
    started = time.monotonic()
    report = BatchReport()
    seqs = db.claim(conn, statements, limit, lease_seconds)
    report.claimed = len(seqs)
    if not seqs:
        return report
    outcomes: list[Outcome] = []
    to_embed = []
    for row in db.read(conn, statements, seqs):
        if not row.present or not row.text.strip():
            outcomes.append(Outcome(row.seq, Action.DELETE))
        elif row.stored_hash == row.text_hash:
            outcomes.append(Outcome(row.seq, Action.KEEP))
            report.unchanged += 1
        else:
            to_embed.append(row)
    if to_embed:
        result = encode_isolating(
            lambda texts: _encode_checked(encoder, vectorizer, texts), [r.text for r in to_embed]
        )
        outcomes.extend(
            Outcome(to_embed[i].seq, Action.WRITE, to_embed[i].text_hash, vector)
            for i, vector in result.vectors.items()
        )
        if result.errors:
            db.record_failures(
                conn,
                statements,
                {to_embed[i].seq: error for i, error in result.errors.items()},
                vectorizer.max_attempts,
            )
            log.warning(
                "vectorizer %s: %d of %d rows failed: %s",
                vectorizer.name,
                len(result.errors),
                len(to_embed),
                next(iter(result.errors.values())),
            )
        report.embedded = len(result.vectors)
        report.failed = len(result.errors)
        report.truncated = result.truncated
        report.tokens = result.tokens
        report.padded_tokens = result.padded_tokens
    if outcomes:
        written = db.write(conn, statements, outcomes)
        report.written = written.written
        report.deleted = written.deleted
        report.superseded = len(outcomes) - written.completed
    report.seconds = time.monotonic() - started
    db.log_batch(conn, statements, {**asdict(report), "worker": worker})
    return report


def _encode_checked(encoder: TextEncoder, vectorizer: Vectorizer, texts: Sequence[str]) -> Encoded:
    if encoder.dimensions != vectorizer.dimensions:
        raise DimensionMismatch(
            f"model {encoder.name} gives {encoder.dimensions} dimensions; vectorizer"
            f" {vectorizer.name!r} stores {vectorizer.dimensions}"
        )
    return encoder.encode(texts)


def drain(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    time_budget: float,
    worker: str = "",
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[BatchReport, bool]:
    """Run batches until the queue is empty or the time budget is spent.
    Returns the summed report and whether work may remain."""
    statements = db.QueueStatements(vectorizer)
    total = BatchReport()
    deadline = time.monotonic() + time_budget
    while True:
        report = run_batch(
            conn,
            vectorizer,
            statements,
            encoder,
            limit=limit,
            lease_seconds=lease_seconds,
            worker=worker,
        )
        total.add(report)
        if report.claimed < limit:
            return total, False
        if time.monotonic() >= deadline or should_stop():
            return total, True
