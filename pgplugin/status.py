"""What operators read: per-vectorizer status, and the errors of failed rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from ._call import call


@dataclass(frozen=True)
class VectorizerStatus:
    """A row of rowembed.status()."""

    name: str
    source: str
    model: str
    queued: int | None  # the counts are None when they cannot be read (see problem)
    in_flight: int | None
    failed: int | None
    embedded: int | None
    rows_per_second: float | None
    eta_seconds: float | None
    backfill: str | None
    storage: str
    index: str | None
    id: int
    problem: str | None  # why the vectorizer cannot work now; None when it can
    chunks: int | None = None  # a chunked vectorizer's embeddings (embedded counts rows)
    rebuild: str | None = None  # a model change in progress (alter_vectorizer)
    training: str | None = None  # its latest fine-tuning job (rowembed.finetune)

    @property
    def pending(self) -> int:
        return (self.queued or 0) + (self.in_flight or 0)


@dataclass(frozen=True)
class RowError:
    """A row of rowembed.errors(): a queue entry whose last attempt failed."""

    vectorizer: str
    key: dict[str, Any]
    attempts: int
    last_error: str
    parked: bool
    failed_at: datetime | None
    retry_after: datetime | None


def status(conn: psycopg.Connection[Any], name: str | None = None) -> list[VectorizerStatus]:
    """Every vectorizer's status, or the one called `name`."""
    with conn.cursor(row_factory=class_row(VectorizerStatus)) as cur:
        rows = cur.execute(
            "SELECT name, source::text, model, queued, in_flight, failed, embedded,"
            " rows_per_second, eta_seconds, backfill, storage, index, id, problem, chunks,"
            " rebuild, training"
            " FROM rowembed.status() WHERE %(name)s::text IS NULL OR name = %(name)s",
            {"name": name},
        ).fetchall()
    return rows


def errors(conn: psycopg.Connection[Any], name: str | None = None) -> list[RowError]:
    """Failed rows of every vectorizer, or of the one called `name`."""
    rows = call(conn, "errors").fetchall()
    return [RowError(*row) for row in rows if name is None or row[0] == name]


def padding_overhead(conn: psycopg.Connection[Any], vectorizer_id: int) -> float | None:
    """Padded tokens computed per real token, less one, over the batches logged."""
    row = conn.execute(
        "SELECT sum(padded_tokens)::float8 / nullif(sum(tokens), 0) - 1 FROM rowembed.batch_stats"
        " WHERE vectorizer_id = %s",
        [vectorizer_id],
    ).fetchone()
    return None if row is None else row[0]


def destination_size(conn: psycopg.Connection[Any], name: str) -> tuple[int, int]:
    """(table bytes, index bytes) of a vectorizer's embeddings."""
    row = conn.execute(
        "SELECT pg_table_size(destination), pg_indexes_size(destination)"
        " FROM rowembed.vectorizer WHERE name = %s",
        [name],
    ).fetchone()
    if row is None:
        raise LookupError(f"no vectorizer {name!r}")
    return row[0], row[1]
