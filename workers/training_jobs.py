"""Runs fine-tuning jobs (rowembed.finetune) on a worker of the train queue.

The job is held by an advisory lock of a session of its own (`jobs`), which
also reports progress; the reads (pairs' texts, hard negatives, evaluation)
run on a second session as the vectorizer's owner, as a worker acts on her
tables. A worker that dies lets go of the job with its session: another
claims it (three claims at most, rowembed._training_max_attempts)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rowembed.finetune import FineTuned, FineTuneOptions, fine_tune_vectorizer
from rowembed.pgplugin import connect, get_vectorizer
from rowembed.pgplugin.finetune import PairsError
from rowembed.pgplugin.training_jobs import (
    TrainingJob,
    claim_training_job,
    finish_training_job,
    record_training_progress,
    training_pairs,
)
from rowembed.settings import Settings

log = logging.getLogger(__name__)

# Progress is written at most this often (a step can take milliseconds).
PROGRESS_SECONDS = 1.0


def run_training_jobs(settings: Settings, worker: str) -> int:
    """Runs jobs until none waits; returns how many ran."""
    ran = 0
    url = settings.require_database()
    with connect(url, "rowembed-train") as jobs:
        while (job := claim_training_job(jobs, worker)) is not None:
            run_job(jobs, url, job, settings)
            ran += 1
    return ran


def run_job(jobs: psycopg.Connection[Any], url: str, job: TrainingJob, settings: Settings) -> None:
    started = time.monotonic()
    try:
        with connect(url, "rowembed-train-reads") as conn:
            v = get_vectorizer(conn, job.vectorizer_id)
            if v.run_as is not None:  # her tables, as her (rowembed._run_as)
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(v.run_as)))
            output = model_directory(settings, job, v.name)
            options = FineTuneOptions.of_job(job.options, output, settings.device)
            log.info("training job %s: fine-tuning %s into %s", job.id, v.name, output)
            done = fine_tune_vectorizer(
                conn, v, training_pairs(jobs, job.id), options,
                say=lambda line: log.info("training job %s: %s", job.id, line),
                progress=_Progress(jobs, job.id),
            )  # fmt: skip
            outcome = done.outcome()
            if options.switch_if_better:
                outcome["switch"] = switch_line(v.name, done)
    except Exception as exc:  # one job's failure is its own: the worker goes on
        error = _first_line(exc)
        log.warning(
            "training job %s failed: %s",
            job.id,
            error,
            exc_info=not isinstance(exc, (PairsError, psycopg.Error, OSError)),
        )
        finish_training_job(jobs, job.id, error=error)
        return
    finish_training_job(jobs, job.id, model=str(output), outcome=outcome)
    log.info("training job %s done in %.0f s: %s", job.id, time.monotonic() - started, outcome)


def switch_line(name: str, done: FineTuned) -> str:
    """What --switch-if-better did, in words."""
    if done.switched_to is None:
        return "not switched: no better on the held-out pairs"
    if done.switched_to.name != name:
        return f"switched: rebuilding as {done.switched_to.name}"
    return "switched: the fine-tuned reranker is its rerank_model"


def model_directory(settings: Settings, job: TrainingJob, vectorizer: str) -> Path:
    """Where `job` saves its model: a new directory under ROWEMBED_TRAINED_MODELS,
    named by the job and its vectorizer, and by the attempt after the first (a
    worker that died may have saved one, even switched to it)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", vectorizer).strip("._")[:60]
    name = f"job-{job.id}-{safe}" + (f".{job.attempts}" if job.attempts > 1 else "")
    return (Path(settings.trained_models).expanduser() / name).resolve()


class _Progress:
    """progress(phase, step, steps, loss) written to the job, at most every
    PROGRESS_SECONDS (and at each phase's last step)."""

    def __init__(self, conn: psycopg.Connection[Any], job_id: int) -> None:
        self.conn, self.job_id, self.written = conn, job_id, 0.0

    def __call__(self, phase: str, step: int, steps: int, loss: float) -> None:
        now = time.monotonic()
        if step in (1, steps) or now - self.written >= PROGRESS_SECONDS:
            record_training_progress(self.conn, self.job_id, phase, step, steps, loss)
            self.written = now


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:1000]
