"""Turns polls of the change clock, NOTIFY wake-ups and a periodic sweep into
embed hints on the broker.

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
from urllib.parse import urlsplit

import psycopg
from kombu.exceptions import OperationalError as KombuOperationalError

from rowembed.pgplugin import wakeups
from rowembed.pgplugin.backfill import top_up_backfills
from rowembed.pgplugin.indexes import build_index, indexes_to_build
from rowembed.pgplugin.queries import query_requests_waiting, rerank_requests_waiting
from rowembed.pgplugin.queue import prune_batch_stats, vectorizers_with_work
from rowembed.pgplugin.training_jobs import training_jobs_waiting
from rowembed.pgplugin.vectorizers import complete_alters

from . import policy
from .celery_app import waiting_messages
from .queues import QUERY_QUEUE, RERANK_QUEUE, TRAIN_QUEUE

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        database_url: str,
        send_hint: Callable[[int, bool], None],  # (vectorizer id, urgent)
        *,
        sweep_seconds: float = 5.0,
        poll_seconds: float = 0.05,
        retry_max_seconds: float = 30.0,
        backfill_chunk: int = 10_000,
        index_memory: str = "1GB",
        index_workers: int = 4,
        send_queries: Callable[[], None] = lambda: None,
        send_reranks: Callable[[], None] = lambda: None,
        send_training: Callable[[], None] = lambda: None,
        broker_problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.database_url = database_url
        self.send_hint = send_hint
        self.send_queries = send_queries  # SQL callers' query texts wait
        self.send_reranks = send_reranks  # SQL callers' rerank requests wait
        self.send_training = send_training  # fine-tuning jobs wait
        self.broker_problem = broker_problem  # shown to SQL callers in application_name
        self.sweep_seconds = sweep_seconds
        self.poll_seconds = poll_seconds
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
            wakeups.listen(conn)
            log.info("dispatcher: listening")
            self.listening.set()
            watch = ChangeWatch()
            next_sweep = 0.0
            shown: str | None = None
            while not stop.is_set():
                problem = self.broker_problem()
                if problem != shown:  # a caller whose request waits is told why
                    name = "rowembed-dispatcher" + (f": {problem}" if problem else "")
                    conn.execute("SELECT set_config('application_name', %s, false)", [name[:63]])
                    shown = problem
                if time.monotonic() >= next_sweep:
                    top_up_backfills(conn, self.backfill_chunk)
                    for vectorizer_id, changes in vectorizers_with_work(conn):
                        self.send_hint(vectorizer_id, changes)
                    prune_batch_stats(conn)
                    self.indexes.start_due(conn)
                    for name in complete_alters(conn):
                        log.info("dispatcher: %s switched to its rebuilt embeddings", name)
                    if query_requests_waiting(conn):  # a lost task or a dead worker
                        self.send_queries()
                    if rerank_requests_waiting(conn):
                        self.send_reranks()
                    if training_jobs_waiting(conn):  # or their worker died
                        self.send_training()
                    next_sweep = time.monotonic() + self.sweep_seconds
                for vectorizer_id in watch.poll(
                    wakeups.change_clock(conn), lambda: wakeups.logged_changes(conn)
                ):
                    self.send_hint(vectorizer_id, True)
                notes = list(conn.notifies(timeout=self.poll_seconds, stop_after=1))
                self._answer_callers(notes)
                for vectorizer_id, urgent in wakeups.woken(notes).items():
                    self.send_hint(vectorizer_id, urgent)

    def _answer_callers(self, notes: list[psycopg.Notify]) -> None:
        requested = wakeups.callers_waiting(notes)
        if "query" in requested:
            self.send_queries()
        if "rerank" in requested:
            self.send_reranks()
        if "train" in requested:
            self.send_training()


class ChangeWatch:
    """Which vectorizers have new live changes, from polls of the change clock
    (rowembed.change_clock(): one sequence read; no lock, nothing in the
    application's transactions).

    The change logs are looked at only while the sequence moves, or while a
    transaction that may have drawn a value is still open: a vectorizer whose
    log has rows is named (its workers fold them into the queue as they claim).
    The last look is taken once all of those transactions have ended, so a
    change that committed late is found then. The sweep finds anything this
    misses."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.open_below = 0  # an xmax seen when the sequence moved
        self.watching = False

    def poll(self, clock: wakeups.ChangeClock, logged: Callable[[], list[int]]) -> list[int]:
        if clock.seq != self.seq:
            self.seq = clock.seq
            self.open_below = clock.xmax
            self.watching = True
        if not self.watching:
            return []
        if clock.xmin >= self.open_below:  # every transaction that drew a value has ended
            self.watching = False
        return logged()


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
        for name in indexes_to_build(conn):
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
    """Sends embed hints, urgent ones (live changes) ahead of the rest, unless
    too many wait already (policy.may_send_hint). While the broker is
    unreachable it says so once, sends nothing for RETRY_SECONDS at a time (the
    work waits in PostgreSQL; the sweep sends again), and `problem()` names it."""

    RETRY_SECONDS = 5.0

    def __init__(self, app: Any, queue: str, max_pending: int, broker: str = "") -> None:
        self.app = app
        self.queue = queue
        self.max_pending = max_pending
        self.broker = broker  # where it is, without credentials: for messages
        self.down = False
        self._retry_at = 0.0

    def problem(self) -> str | None:
        return f"broker {self.broker} unreachable" if self.down else None

    def queries(self) -> None:
        """Query texts of SQL callers wait: a task on the query queue answers them."""
        self._send(
            lambda: self.app.send_task(
                "rowembed.answer_queries", queue=QUERY_QUEUE, ignore_result=True
            )
        )

    def reranks(self) -> None:
        """Rerank requests of SQL callers wait: a task on the rerank queue answers them."""
        self._send(
            lambda: self.app.send_task(
                "rowembed.answer_reranks", queue=RERANK_QUEUE, ignore_result=True
            )
        )

    def training(self) -> None:
        """Fine-tuning jobs wait: one task on the train queue runs them all, so
        none is sent while one waits there (no worker serves the queue yet)."""

        def hint() -> None:
            if waiting_messages(self.app, TRAIN_QUEUE) == 0:
                self.app.send_task("rowembed.train", queue=TRAIN_QUEUE, ignore_result=True)

        self._send(hint)

    def __call__(self, vectorizer_id: int, urgent: bool) -> None:
        def hint() -> None:
            if policy.may_send_hint(self.app, self.queue, self.max_pending, urgent):
                self.app.send_task(
                    "rowembed.embed",
                    args=[vectorizer_id],
                    queue=self.queue,
                    priority=policy.hint_priority(self.app, urgent),
                    ignore_result=True,  # nobody waits for it (nor for the result backend)
                )

        self._send(hint)

    def _send(self, send: Callable[[], None]) -> None:
        now = time.monotonic()
        if self.down and now < self._retry_at:
            return
        try:
            send()
        except (KombuOperationalError, OSError) as exc:
            if not self.down:
                log.warning(
                    "dispatcher: the broker %s is unreachable (%s); the work waits in"
                    " PostgreSQL, and hints are tried again every %.0f s",
                    self.broker,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    self.RETRY_SECONDS,
                )
            self.down, self._retry_at = True, now + self.RETRY_SECONDS
            return
        if self.down:
            log.info("dispatcher: the broker %s answers again", self.broker)
            self.down = False


def broker_location(url: str) -> str:
    """host:port (or the socket's path) of a broker URL: never its credentials."""
    parts = urlsplit(url)
    if parts.hostname:
        default = 5672 if parts.scheme.startswith(("amqp", "pyamqp")) else 6379
        return f"{parts.hostname}:{parts.port or default}"
    return parts.path or parts.scheme
