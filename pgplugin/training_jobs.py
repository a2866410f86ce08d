"""Fine-tuning jobs (rowembed.finetune): started from SQL, claimed and run by
a worker of the train queue, which reports its progress and its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ._call import call, scalar
from .finetune import Pair


@dataclass(frozen=True)
class TrainingJob:
    """A row of rowembed.training_job."""

    id: int
    vectorizer_id: int
    requested_by: str
    options: dict[str, Any]  # rowembed.finetune()'s arguments, checked
    state: str  # waiting, running, done, failed
    worker: str | None
    attempts: int
    phase: str | None  # model, or reranker
    step: int | None
    steps: int | None
    loss: float | None
    model: str | None
    outcome: dict[str, Any] | None
    error: str | None
    requested_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class JobStatus:
    """A row of rowembed.training_jobs()."""

    id: int
    vectorizer: str
    state: str
    step: int | None
    steps: int | None
    loss: float | None
    model: str | None
    outcome: dict[str, Any] | None
    error: str | None
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    status: str  # one line, as status() shows it


def start_finetune(conn: psycopg.Connection[Any], name: str, pairs: str, **options: Any) -> int:
    """rowembed.finetune(): the job's id. `options` as the SQL function's arguments."""
    return int(scalar(conn, "finetune", vectorizer=name, pairs=pairs, **options))


def claim_training_job(conn: psycopg.Connection[Any], worker: str) -> TrainingJob | None:
    """The next job this session may run, held by it until `finish_training_job`
    or the session's end."""
    with conn.cursor(row_factory=class_row(TrainingJob)) as cursor:
        cursor.execute("SELECT * FROM rowembed.claim_training_job(%s)", [worker])
        return cursor.fetchone()


def training_pairs(conn: psycopg.Connection[Any], job_id: int) -> list[Pair]:
    rows = conn.execute(
        "SELECT query, key FROM rowembed.training_pair WHERE job_id = %s", [job_id]
    ).fetchall()
    return [Pair(query, key) for query, key in rows]


def record_training_progress(
    conn: psycopg.Connection[Any], job_id: int, phase: str, step: int, steps: int, loss: float
) -> None:
    call(conn, "training_progress", job=job_id, phase=phase, step=step, steps=steps, loss=loss)


def finish_training_job(
    conn: psycopg.Connection[Any],
    job_id: int,
    *,
    model: str | None = None,
    outcome: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    call(
        conn, "training_finish", job=job_id, model=model,
        outcome=None if outcome is None else Jsonb(outcome), error=error,
    )  # fmt: skip


def training_jobs_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(scalar(conn, "training_jobs_waiting"))


def training_jobs(conn: psycopg.Connection[Any]) -> list[JobStatus]:
    """The session's jobs, newest first."""
    with conn.cursor(row_factory=class_row(JobStatus)) as cursor:
        return cursor.execute("SELECT * FROM rowembed.training_jobs()").fetchall()
