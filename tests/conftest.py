"""Real services, started once per session: embedded PostgreSQL 18 + pgvector,
a Redis server, and (for the tests that ask for it) a Celery worker process."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from site-packages, never the network
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import itertools
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rowembed.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from rowembed.pgplugin import connect, migrate

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def pytest_configure(config: pytest.Config) -> None:
    """A temporary directory of this session's own, removed at its end: pytest's
    shared one keeps the last three sessions' and prunes older ones, a running
    session's among them when two run at once."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="rowembed-pytest-")
        config._rowembed_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    made = getattr(config, "_rowembed_basetemp", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    with connect(postgres.url) as conn:
        migrate(conn)
    return postgres.url


_databases = itertools.count()


@contextmanager
def new_database(postgres: EmbeddedPostgres) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a new, empty database of the session's server."""
    name = f"db_{next(_databases)}"
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with connect(postgres.url.replace("/postgres?", f"/{name}?")) as conn:
        yield conn


@pytest.fixture
def own_db(postgres: EmbeddedPostgres) -> Iterator[psycopg.Connection[Any]]:
    """A migrated database of this test's own (for tests that leave things broken)."""
    with new_database(postgres) as conn:
        migrate(conn)
        yield conn


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = EmbeddedRedis().start()
    yield server.url
    server.remove()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(database_url) as c:
        yield c


_names = itertools.count()


@pytest.fixture
def table(request: pytest.FixtureRequest) -> str:
    """A fresh table name for this test (unquoted, lower case)."""
    return f"t{next(_names)}_{request.node.name.split('[')[0][-30:].lower()}"


@pytest.fixture(scope="session")
def encoder() -> Any:
    from rowembed.workers.runtime import Encoder

    return Encoder.load(MODEL, device="cpu")


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cross-encoder: the bundled MiniLM with a seeded one-logit head."""
    from rowembed.dev.sample_models import minilm_cross_encoder

    return minilm_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


class WorkerProcess:
    """`rowembed worker` (with its dispatcher) in a process group of its own."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        module: str = "rowembed",
        args: Sequence[str] = ("--concurrency", "1"),
    ) -> None:
        self.log_path = log_path
        self.argv = [sys.executable, "-m", module, "--loglevel", "INFO", "worker", *args]
        self.env = {
            **os.environ,
            "ROWEMBED_DATABASE_URL": database_url,
            "ROWEMBED_REDIS_URL": redis_url,
            "ROWEMBED_SWEEP_SECONDS": "1",
            "ROWEMBED_TASK_SECONDS": "2",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: b"ready." in self.log_path.read_bytes(), timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker, its pool and its dispatcher at once, like a lost machine."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture(scope="session")
def worker(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        database_url, redis_url, tmp_path_factory.mktemp("worker") / "worker.log"
    ).start()
    yield process
    process.stop()


@contextmanager
def database_with_worker(
    postgres: EmbeddedPostgres, redis_url: str, log: Path
) -> Iterator[tuple[str, WorkerProcess]]:
    """A migrated database of its own and a worker (with its dispatcher) on it
    only: the session's worker serves the shared database, where tests that
    drain queues in-process expect no other worker. Yields (URL, worker)."""
    with new_database(postgres) as admin:
        migrate(admin)
        url = postgres.url.replace("/postgres?", f"/{admin.info.dbname}?")
        process = WorkerProcess(url, redis_url, log).start()
        try:
            yield url, process
        finally:
            process.stop()


@pytest.fixture(scope="module")
def served(
    postgres: EmbeddedPostgres, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WorkerProcess]]:
    """A migrated database of this module's own and a worker (with its
    dispatcher) serving it alone: (URL, worker)."""
    log = tmp_path_factory.mktemp("served-worker") / "worker.log"
    with database_with_worker(postgres, redis_url, log) as stack:
        yield stack


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # A fresh directory in the system temp dir: pytest keeps its own tmp dirs
        # private (0700), out of reach of the unprivileged server user.
        self.pg = EmbeddedPostgres().start()
        self.redis = EmbeddedRedis(tmp / "redis").start()
        with connect(self.pg.url) as conn:
            migrate(conn)
        self.workers: list[WorkerProcess] = []

    def worker(self, name: str, *, url: str | None = None, **kwargs: Any) -> WorkerProcess:
        process = WorkerProcess(
            url or self.pg.url, self.redis.url, self.tmp / f"{name}.log", **kwargs
        ).start()
        self.workers.append(process)
        return process

    def close(self) -> None:
        for process in self.workers:
            process.stop()
        self.redis.remove()
        self.pg.remove()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A PostgreSQL and a Redis of this test's own, and the workers it starts."""
    s = Stack(tmp_path)
    yield s
    s.close()
