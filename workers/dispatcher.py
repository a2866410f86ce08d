"""Turns NOTIFY wake-ups and a periodic sweep into embed hints on the broker.

Hints are cheap and duplicates harmless (a task that finds nothing claimable
returns at once), so the dispatcher errs towards sending; it only holds back
when the broker already has enough hints waiting. Several dispatchers may run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg import sql

from rowembed.pgplugin.indexes import build_index

from .celery_app import BACKGROUND, URGENT, waiting_messages

log = logging.getLogger(__name__)

CHANNEL = "rowembed"


def vectorizers_with_work(conn: psycopg.Connection[Any]) -> list[tuple[int, bool]]:
    """(id, has live changes) of vectorizers whose queue holds unclaimed entries
    (lost hints are found here)."""
    return conn.execute("SELECT id, changes FROM rowembed.vectorizers_with_work()").fetchall()


def step_backfills(conn: psycopg.Connection[Any], chunk: int) -> None:
    """Top up each running backfill's queued backlog to about three chunks (a few
    chunk-sized transactions per sweep): the queue stays short, and live changes,
    queued at a higher priority, stay first."""
    running = conn.execute(
        "SELECT b.vectorizer_id, n.nspname, c.relname FROM rowembed.backfill b"
        " JOIN rowembed.vectorizer v ON v.id = b.vectorizer_id"
        " JOIN pg_class c ON c.oid = v.queue_table JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE b.state = 'running'"
    ).fetchall()
    for vectorizer_id, queue_schema, queue_table in running:
        backlog = sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE priority = 1 LIMIT %s) AS q"
        ).format(sql.Identifier(queue_schema, queue_table))
        for _ in range(10):
            (queued,) = conn.execute(backlog, [3 * chunk]).fetchone()  # type: ignore[misc]
            if queued >= 3 * chunk:
                break
            conn.execute("SELECT rowembed.backfill_step(%s, %s)", [vectorizer_id, chunk])
            state = conn.execute(
                "SELECT state FROM rowembed.backfill WHERE vectorizer_id = %s", [vectorizer_id]
            ).fetchone()
            if state != ("running",):
                break


def prune_batch_stats(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM rowembed.batch_stats WHERE finished_at < now() - interval '1 day'")


class Dispatcher:
    def __init__(
        self,
        database_url: str,
        send_hint: Callable[[int, bool], None],  # (vectorizer id, urgent)
        *,
        sweep_seconds: float = 5.0,
        retry_max_seconds: float = 30.0,
        backfill_chunk: int = 10_000,
        index_memory: str = "1GB",
        index_workers: int = 4,
    ) -> None:
        self.database_url = database_url
        self.send_hint = send_hint
        self.sweep_seconds = sweep_seconds
        self.retry_max_seconds = retry_max_seconds
        self.backfill_chunk = backfill_chunk
        self.listening = threading.Event()  # set while subscribed to notifications
        self.indexes = IndexBuilds(database_url, index_memory, index_workers)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; reconnects with backoff when PostgreSQL goes away."""
        delay = 0.5
        while not stop.is_set():
            try:
                self._listen(stop)
            except (psycopg.OperationalError, OSError, KombuOperationalError) as exc:
                log.warning(
                    "dispatcher: database or broker unavailable (%s); retrying in %.1fs",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                    delay,
                )
                stop.wait(delay)
                delay = min(delay * 2, self.retry_max_seconds)
            except Exception:
                log.exception("dispatcher: unexpected error; retrying in %.1fs", delay)
                stop.wait(delay)
                delay = min(delay * 2, self.retry_max_seconds)
            else:
                delay = 0.5
            finally:
                self.listening.clear()

    def _listen(self, stop: threading.Event) -> None:
        with psycopg.connect(
            self.database_url, autocommit=True, application_name="rowembed-dispatcher"
        ) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            log.info("dispatcher: listening")
            self.listening.set()
            next_sweep = 0.0
            while not stop.is_set():
                if time.monotonic() >= next_sweep:
                    step_backfills(conn, self.backfill_chunk)
                    for vectorizer_id, changes in vectorizers_with_work(conn):
                        self.send_hint(vectorizer_id, changes)
                    prune_batch_stats(conn)
                    self.indexes.start_due(conn)
                    next_sweep = time.monotonic() + self.sweep_seconds
                woken: dict[int, bool] = {}
                notes = list(conn.notifies(timeout=min(1.0, self.sweep_seconds), stop_after=1))
                # Collapse a burst of notifications into one hint per vectorizer.
                notes += conn.notifies(timeout=0.02)
                for note in notes:
                    # "N": rows of vectorizer N changed; "N backfill": a backfill queued rows.
                    key, _, kind = note.payload.partition(" ")
                    if key.isdigit():
                        woken[int(key)] = woken.get(int(key), False) or kind != "backfill"
                for vectorizer_id, urgent in woken.items():
                    self.send_hint(vectorizer_id, urgent)


class IndexBuilds:
    """Builds deferred indexes whose backlog has drained, one at a time, in a
    thread with its own session (a build takes minutes; hints must not wait).
    A failed build is tried again after RETRY_SECONDS."""

    RETRY_SECONDS = 600.0

    def __init__(self, database_url: str, memory: str, parallel_workers: int) -> None:
        self.database_url = database_url
        self.memory = memory
        self.parallel_workers = parallel_workers
        self.thread: threading.Thread | None = None
        self.failed_at: dict[str, float] = {}

    def start_due(self, conn: psycopg.Connection[Any]) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        now = time.monotonic()
        for (name,) in conn.execute("SELECT rowembed.indexes_to_build()").fetchall():
            if now - self.failed_at.get(name, -self.RETRY_SECONDS) >= self.RETRY_SECONDS:
                self.thread = threading.Thread(
                    target=self._build, args=(name,), name="rowembed-index", daemon=True
                )
                self.thread.start()
                return

    def _build(self, name: str) -> None:
        try:
            with psycopg.connect(
                self.database_url, autocommit=True, application_name="rowembed-index"
            ) as conn:
                build_index(conn, name, memory=self.memory, parallel_workers=self.parallel_workers)
            self.failed_at.pop(name, None)
        except Exception:
            self.failed_at[name] = time.monotonic()
            log.exception(
                "dispatcher: building the index of %s failed; retrying in %.0f s",
                name,
                self.RETRY_SECONDS,
            )


class CeleryHints:
    """Sends embed hints: urgent ones (live changes) ahead of the rest. A
    background hint is held back while `max_pending` messages wait; an urgent
    one only while eight times as many do, so backfill hints piling up never
    keep a live change waiting for the sweep."""

    def __init__(self, app: Any, queue: str, max_pending: int) -> None:
        self.app = app
        self.queue = queue
        self.max_pending = max_pending

    def __call__(self, vectorizer_id: int, urgent: bool) -> None:
        limit = self.max_pending * (8 if urgent else 1)
        if waiting_messages(self.app, self.queue) < limit:
            self.app.send_task(
                "rowembed.embed",
                args=[vectorizer_id],
                queue=self.queue,
                priority=URGENT if urgent else BACKGROUND,
            )
