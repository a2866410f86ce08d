"""docker-compose.yml and the Dockerfile, without a container engine: the compose
file's shape, its commands against rowembed's real CLI parser, and the same
commands run as processes against a real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg import sql

from rowembed.cli import COMMANDS, build_parser
from rowembed.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.settings import Settings
from rowembed.workers.celery_app import make_app

from .conftest import MODEL, wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
# The services that run the rowembed image (its entrypoint is `rowembed`).
ROWEMBED_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "rowembed"}
LONG_RUNNING = sorted(set(ROWEMBED_SERVICES) - {"migrate"})


def test_the_stack_has_the_services_it_needs() -> None:
    assert {"postgres", "redis", "migrate", "dispatcher", "worker", "metrics"} <= set(SERVICES)
    assert set(LONG_RUNNING) == {"dispatcher", "worker", "query-worker", "trainer", "metrics"}


@pytest.mark.parametrize("name", sorted(ROWEMBED_SERVICES))
def test_each_rowembed_command_parses_with_the_cli(name: str) -> None:
    command = ROWEMBED_SERVICES[name]["command"]
    args = build_parser().parse_args(command)  # a bad one exits 2, naming it
    assert args.command in COMMANDS


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_nothing_starts_before_migrate_has_completed(name: str) -> None:
    depends_on = ROWEMBED_SERVICES[name]["depends_on"]
    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    assert depends_on["postgres"] == {"condition": "service_healthy"}
    assert depends_on["redis"] == {"condition": "service_healthy"}


def test_migrate_is_one_shot_after_postgres_is_healthy() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"  # run once: a restart loop would never "complete"


def test_postgres_redis_and_the_worker_have_health_checks() -> None:
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"]
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    worker_check = SERVICES["worker"]["healthcheck"]["test"]
    assert worker_check[0] == "CMD-SHELL"
    assert "inspect ping -d celery@$$HOSTNAME" in worker_check[1]


def test_the_image_is_lean_and_runs_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line[:1].isupper()]
    users = [rest.strip() for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["rowembed"]' in dockerfile
    installs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "embedded" not in installs  # the demo's servers and model stay out
    assert "pip install --no-cache-dir --no-deps ." in installs
    assert '"torch==$TORCH_VERSION"' in installs  # pinned, one build for every service
    # The dependencies install before any source is copied (the layer is cached).
    steps = [f"{word} {rest}" for word, rest in instructions]
    dependencies = next(i for i, step in enumerate(steps) if "requirements.txt" in step)
    assert dependencies < next(
        i for i, step in enumerate(steps) if step.startswith("COPY rowembed")
    )


def test_the_stack_runs_without_a_gpu_and_takes_one_where_asked() -> None:
    """`docker compose up` works on any machine: GPUs come from the override file."""
    assert not any("deploy" in service for service in SERVICES.values())
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    assert set(gpu) == {"worker", "query-worker", "trainer"}
    for service in gpu.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_every_worker_reads_the_models_the_trainer_saves() -> None:
    """A fine-tuned model is loaded by the embedding and query workers from the
    directory the trainer saved it in: one volume, mounted where the setting says."""
    where = COMPOSE["x-rowembed"]["environment"]["ROWEMBED_TRAINED_MODELS"]
    for name in ("worker", "query-worker", "trainer"):
        assert f"trained:{where}" in SERVICES[name]["volumes"], name
    assert (
        "train"
        in SERVICES["trainer"]["command"][SERVICES["trainer"]["command"].index("--queues") + 1]
    )


def test_a_stopped_worker_may_finish_its_batch() -> None:
    """Docker's 10 s default would kill a batch mid-way: the worker's grace
    outlasts the hard time limit."""
    grace = SERVICES["worker"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings().hard_time_limit


# ---------------------------------------------------------------------------
# The compose file's own commands, run as processes.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interpolated(value: str) -> str:
    """compose's `${VAR:-default}`, as compose fills it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def postgres_environment() -> dict[str, str]:
    return {k: interpolated(str(v)) for k, v in SERVICES["postgres"]["environment"].items()}


def local_url(pg: EmbeddedPostgres, user: str, password: str, dbname: str) -> str:
    return f"postgresql://{user}:{password}@/{dbname}?host={pg.base_dir}"


def database_url(name: str, pg: EmbeddedPostgres) -> str:
    """The service's ROWEMBED_DATABASE_URL (its role, password and database), on `pg`."""
    url = urlsplit(interpolated(ROWEMBED_SERVICES[name]["environment"]["ROWEMBED_DATABASE_URL"]))
    assert url.username and url.password
    return local_url(pg, url.username, url.password, url.path.lstrip("/"))


def service_env(name: str, pg: EmbeddedPostgres, redis_url: str) -> dict[str, str]:
    """The service's environment as compose gives it, the servers' addresses replaced."""
    env = {k: interpolated(str(v)) for k, v in ROWEMBED_SERVICES[name]["environment"].items()}
    assert set(env) >= {"ROWEMBED_DATABASE_URL", "ROWEMBED_REDIS_URL"}
    env["ROWEMBED_DATABASE_URL"] = database_url(name, pg)
    env["ROWEMBED_REDIS_URL"] = redis_url
    # `celery`, as the image has it on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **env, "PATH": path}


def rowembed_argv(command: list[str]) -> list[str]:
    return [sys.executable, "-m", "rowembed", *command]


def health_check(name: str, env: dict[str, str], timeout: float = 60) -> None:
    """Runs the service's health check as Docker would, in this machine's shell."""
    test = SERVICES[name]["healthcheck"]["test"]
    # compose turns `$$` into `$`; the container's shell expands it.
    argv = ["sh", "-c", test[1].replace("$$", "$")] if test[0] == "CMD-SHELL" else test[1:]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(argv)}: {result.stdout}{result.stderr}"


class TaskEvents:
    """The types of the Celery events seen on the broker (what Flower shows), from
    a thread of this process."""

    def __init__(self, redis_url: str) -> None:
        self.app = make_app(Settings(redis_url=redis_url))
        self.seen: set[str] = set()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(
                connection, handlers={"*": lambda event: self.seen.add(event["type"])}
            )
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        # A worker with events on sends a heartbeat every 2 s: then we are listening.
        wait_until(lambda: "worker-heartbeat" in self.seen, timeout=30, interval=0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)


def test_only_migrate_connects_as_the_superuser() -> None:
    roles = {
        name: urlsplit(interpolated(s["environment"]["ROWEMBED_DATABASE_URL"])).username
        for name, s in ROWEMBED_SERVICES.items()
    }
    assert roles.pop("migrate") == "postgres"
    assert set(roles.values()) == {"rowembed_worker"}
    postgres = SERVICES["postgres"]
    assert "./compose/roles.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in postgres["volumes"]
    # Published on the host's loopback only, as the exporter.
    assert postgres["ports"] == ["127.0.0.1:5432:5432"]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL (not migrated) and a Redis of this test's own, with the
    database and roles the postgres service makes on its first start."""
    pg = EmbeddedPostgres().start()
    redis = EmbeddedRedis(tmp_path / "redis").start()
    try:
        environment = postgres_environment()
        with connect(pg.url) as admin:  # the image makes POSTGRES_DB before its init scripts
            admin.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(environment["POSTGRES_DB"]))
            )
        subprocess.run(
            ["sh", str(ROOT / "compose" / "roles.sh")],
            env={
                **os.environ,
                **environment,
                "POSTGRES_USER": "postgres",
                "PGHOST": str(pg.base_dir),
                "PATH": f"{pg.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield pg, redis.url
    finally:
        redis.remove()
        pg.remove()


def test_the_compose_commands_migrate_embed_search_and_export(
    servers: tuple[EmbeddedPostgres, str], tmp_path: Path
) -> None:
    pg, redis_url = servers
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(name: str, command: list[str]) -> None:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                rowembed_argv(command),
                env=service_env(name, pg, redis_url),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append((name, process, log))

    try:
        migrated = subprocess.run(
            rowembed_argv(SERVICES["migrate"]["command"]),
            env=service_env("migrate", pg, redis_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith("applied 0001")
        assert migrated.stderr == ""  # search_text's loopback is ready

        # The application, as the role compose/roles.sh makes for it.
        environment = postgres_environment()
        app_url = local_url(pg, "app", environment["APP_PASSWORD"], environment["POSTGRES_DB"])
        with connect(app_url) as conn:
            conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO docs VALUES (1, 'Cats purr and sleep all day.'),"
                " (2, 'The invoice total includes tax.'), (3, 'Bake bread in a hot oven.')"
            )
            v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
            start("dispatcher", SERVICES["dispatcher"]["command"])
            start("worker", SERVICES["worker"]["command"])
            start("query-worker", SERVICES["query-worker"]["command"])
            metrics_port = free_port()
            metrics_command = [
                str(metrics_port) if arg == "9464" else arg
                for arg in SERVICES["metrics"]["command"]
            ]
            start("metrics", metrics_command)

            def embedded() -> bool:
                for name, process, log in processes:
                    assert process.poll() is None, f"{name} exited:\n{log.read_text()}"
                count_rows = sql.SQL("SELECT count(*) FROM {}").format(v.destination)
                return conn.execute(count_rows).fetchone() == (3,)

            wait_until(embedded, timeout=60, interval=0.2)

        worker_env = service_env("worker", pg, redis_url)
        health_check("worker", {**worker_env, "HOSTNAME": socket.gethostname()})

        with TaskEvents(redis_url) as events:
            search = subprocess.run(
                rowembed_argv(["search", "docs", "a sleepy cat", "--k", "1", "--json"]),
                env=worker_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert search.returncode == 0, search.stderr
            assert json.loads(search.stdout.splitlines()[0])["row"]["id"] == 1
            # The dispatcher's task, sent and done, as Flower would show it.
            wait_until(lambda: {"task-sent", "task-succeeded"} <= events.seen, timeout=10)

        check = SERVICES["metrics"]["healthcheck"]["test"]
        assert check[-1].count("9464") == 1
        health_check_env = service_env("metrics", pg, redis_url)
        port_check = [arg.replace("9464", str(metrics_port)) for arg in check[1:]]
        wait_until(
            lambda: subprocess.run(port_check, env=health_check_env).returncode == 0,
            timeout=30,
            interval=0.5,
        )
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            scraped = response.read().decode()
        assert 'rowembed_embedded_rows{vectorizer="docs"} 3.0' in scraped
        assert 'rowembed_connected_processes{kind="worker"} 1.0' in scraped
        assert 'rowembed_connected_processes{kind="query_worker"} 1.0' in scraped
        assert 'rowembed_connected_processes{kind="dispatcher"} 1.0' in scraped
    finally:
        for _, process, _ in processes:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    # ROWEMBED_LOG_FORMAT=json: every line the long-running services wrote is JSON
    # (no Celery banner, no plain warning).
    logged: dict[str, list[dict[str, Any]]] = {}
    for name, _, log in processes:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        try:
            logged[name] = [json.loads(line) for line in lines]
        except ValueError as exc:
            pytest.fail(f"{name} logged a line that is not JSON: {exc.doc!r}")
    # What a task logs names the task.
    assert any(
        entry["logger"] == "rowembed.workers.tasks" and entry.get("task_name") == "rowembed.embed"
        for entry in logged["worker"]
    )
