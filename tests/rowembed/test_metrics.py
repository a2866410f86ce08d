"""`rowembed metrics`: the real exporter process, scraped over HTTP, against the
real PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.vectorizers import alter_vectorizer

from ..conftest import MODEL, wait_until

Conn = psycopg.Connection[Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def exporter(
    database_url: str, port_from_env: bool = False, token: str | None = None
) -> Iterator[str]:
    """`rowembed metrics` in a process of its own; yields its /metrics URL."""
    port = free_port()
    env = {**os.environ, "ROWEMBED_DATABASE_URL": database_url}
    if token is not None:
        env["ROWEMBED_METRICS_TOKEN"] = token
    port_args = ["--port", str(port)]
    if port_from_env:
        env["ROWEMBED_METRICS_PORT"] = str(port)
        port_args = []
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "rowembed", "metrics"),
                *port_args,
                *("--address", "127.0.0.1"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/metrics"

        def answers() -> bool:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the exporter exited: {log.read().decode()}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return True
            except urllib.error.HTTPError as refused:
                refused.close()
                return True  # it answered (with a token required: 401)
            except OSError:
                return False

        try:
            wait_until(answers, timeout=30, interval=0.2)
            yield url
        finally:
            process.terminate()
            process.wait(10)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def database_url_of(postgres: EmbeddedPostgres, conn: Conn) -> str:
    return postgres.url.replace("/postgres?", f"/{conn.info.dbname}?")


def test_the_scrape_reports_what_the_database_holds(
    own_db: Conn, postgres: EmbeddedPostgres
) -> None:
    conn = own_db
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'doc ' || i FROM generate_series(1, 5) i")
    docs = create_vectorizer(conn, "docs", ["body"], model=MODEL)
    conn.execute(
        sql.SQL("UPDATE {} SET failed_at = now(), last_error = 'boom' WHERE id = 1").format(
            docs.queue
        )
    )
    conn.execute(
        sql.SQL("UPDATE {} SET enqueued_at = now() - interval '100 seconds' WHERE id = 2").format(
            docs.queue
        )
    )
    # Three batches of one worker in the last minute; one of another, two hours ago.
    conn.execute(
        "INSERT INTO rowembed.batch_stats (vectorizer_id, finished_at, worker, claimed, embedded,"
        " written, unchanged, deleted, superseded, failed, truncated, tokens, padded_tokens,"
        " seconds)"
        " SELECT %(id)s, now() - interval '5 seconds', 'host-a:1', 10, 9, 9, 0, 0, 0, 1, 0,"
        "        100, 150, s FROM unnest(ARRAY[1.0, 2.0, 3.0]) AS s"
        " UNION ALL SELECT %(id)s, now() - interval '2 hours', 'host-b:2', 4, 4, 4, 0, 0, 0, 0,"
        "        0, 40, 40, 9.0",
        {"id": docs.id},
    )
    with connect(database_url_of(postgres, conn), "rowembed-worker") as worker_session:
        worker_session.execute("SELECT rowembed.register_worker()")  # a live claim token
        with exporter(database_url_of(postgres, conn)) as url:
            samples = scrape(url)
    (seq,) = conn.execute("SELECT last_value FROM rowembed.change_seq").fetchone()  # type: ignore[misc]

    assert of(samples, "rowembed_up") == 1
    assert of(samples, "rowembed_vectorizer_broken", vectorizer="docs") == 0
    assert of(samples, "rowembed_queued_rows", vectorizer="docs") == 4
    assert of(samples, "rowembed_in_flight_rows", vectorizer="docs") == 0
    assert of(samples, "rowembed_failed_rows", vectorizer="docs") == 1
    assert of(samples, "rowembed_embedded_rows", vectorizer="docs") == 0
    assert 100 <= of(samples, "rowembed_oldest_pending_age_seconds", vectorizer="docs") < 160  # type: ignore[operator]
    assert of(samples, "rowembed_rows_per_second", vectorizer="docs") == pytest.approx(27 / 60)
    assert of(samples, "rowembed_tokens_per_second", vectorizer="docs") == pytest.approx(5.0)
    duration = "rowembed_batch_duration_seconds"
    assert of(samples, duration, vectorizer="docs", quantile="0.5") == pytest.approx(2.0)
    assert of(samples, duration, vectorizer="docs", quantile="0.99") == pytest.approx(2.98)
    assert of(samples, "rowembed_padding_ratio", vectorizer="docs") == pytest.approx(1.5)
    assert of(samples, "rowembed_live_claims") == 1
    assert of(samples, "rowembed_connected_processes", kind="worker") == 1
    assert of(samples, "rowembed_connected_processes", kind="dispatcher") == 0
    age = "rowembed_worker_last_batch_age_seconds"
    assert 5 <= of(samples, age, worker="host-a:1") < 65  # type: ignore[operator]
    assert 7200 <= of(samples, age, worker="host-b:2") < 7260  # type: ignore[operator]
    assert of(samples, "rowembed_queued_changes_total") == seq


def test_a_broken_vectorizer_loses_its_own_samples_only(
    own_db: Conn, postgres: EmbeddedPostgres
) -> None:
    conn = own_db
    for name in ("good", "odd", "gone", "chunked", "locked"):
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (1, 'x'), (2, 'y')").format(sql.Identifier(name))
        )
    create_vectorizer(conn, "good", ["body"], model=MODEL)
    odd = create_vectorizer(conn, "odd", ["body"], model=MODEL)
    create_vectorizer(conn, "gone", ["body"], model=MODEL)
    create_vectorizer(conn, "chunked", ["body"], model=MODEL, chunking="tokens")
    alter_vectorizer(conn, "good", storage="halfvec")  # a rebuild beside it
    # Its queue's lag query now fails (status() does not read that column, and a
    # column of another type is no `problem`: its name is there).
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN enqueued_at TYPE text").format(odd.queue))
    conn.execute("DROP TABLE gone")
    locked = create_vectorizer(conn, "locked", ["body"], model=MODEL)

    with exporter(database_url_of(postgres, conn)) as url, psycopg.connect(conn.info.dsn) as holder:
        # Its owner holds a lock on its queue all through the scrape.
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(locked.queue))
        samples = scrape(url)

    assert of(samples, "rowembed_up") == 1
    assert of(samples, "rowembed_queued_rows", vectorizer="good") == 2
    assert of(samples, "rowembed_oldest_pending_age_seconds", vectorizer="good") is not None
    assert of(samples, "rowembed_queued_rows", vectorizer="odd") == 2
    assert of(samples, "rowembed_oldest_pending_age_seconds", vectorizer="odd") is None
    assert of(samples, "rowembed_vectorizer_broken", vectorizer="gone") == 1
    assert of(samples, "rowembed_vectorizer_broken", vectorizer="locked") == 1
    assert of(samples, "rowembed_vectorizer_broken", vectorizer="good") == 0
    assert of(samples, "rowembed_vectorizer_rebuilding", vectorizer="good") == 1
    assert of(samples, "rowembed_vectorizer_rebuilding", vectorizer="odd") == 0
    assert of(samples, "rowembed_embedded_chunks", vectorizer="chunked") == 0
    assert of(samples, "rowembed_embedded_chunks", vectorizer="odd") is None


def test_an_unreachable_database_is_up_0_not_a_failed_scrape(tmp_path: Any) -> None:
    with exporter(f"postgresql://postgres@/postgres?host={tmp_path}", port_from_env=True) as url:
        samples = scrape(url)
    assert of(samples, "rowembed_up") == 0


def test_the_exporter_imports_neither_torch_nor_celery() -> None:
    """`rowembed metrics` runs beside the database, not on a GPU machine."""
    probe = "import sys, rowembed.metrics; print(sorted({'torch', 'celery'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_with_a_token_the_exporter_answers_only_who_brings_it(
    own_db: Conn, postgres: EmbeddedPostgres
) -> None:
    with exporter(database_url_of(postgres, own_db), token="s3cret") as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30)
            refused.value.close()
            assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        assert "rowembed_up 1.0" in text
