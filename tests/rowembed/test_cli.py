"""The `rowembed` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL


def rowembed(
    *args: str, database_url: str | None = None, loglevel: str | None = "WARNING"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROWEMBED_")}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["ROWEMBED_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "rowembed", *(["--loglevel", loglevel] if loglevel else []), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_twice(database_url: str) -> None:
    assert rowembed("migrate", database_url=database_url).stdout.strip() == "already up to date"


def test_search_from_the_shell(
    conn: psycopg.Connection[Any], database_url: str, encoder: Encoder
) -> None:
    conn.execute("CREATE TABLE cli_docs (id int PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO cli_docs VALUES (1, 'The kitten chased a ball of yarn.'),"
        " (2, 'Quarterly revenue grew by ten percent.'), (3, 'Bake the bread at 220 degrees.')"
    )
    v = create_vectorizer(conn, "cli_docs", ["body"], model=MODEL)
    run_batch(conn, Queue(v), encoder, limit=10, lease_seconds=60)
    result = rowembed(
        "search",
        "cli_docs",
        "a cat playing",
        "--k",
        "2",
        "--min-similarity",
        "-1",
        "--json",
        database_url=database_url,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["row"]["id"] == 1
    assert len(rows) == 2 and rows[0]["similarity"] > rows[1]["similarity"]

    status = rowembed("status", database_url=database_url)
    assert "cli_docs" in status.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["migrate"], "no database: set ROWEMBED_DATABASE_URL"),
        (["worker"], "no database"),
    ],
)
def test_missing_settings_are_named(args: list[str], message: str) -> None:
    result = rowembed(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unreachable_database_is_one_clear_line() -> None:
    result = rowembed("status", database_url="postgresql://nobody@/x?host=/nonexistent")
    assert result.returncode == 1
    assert result.stderr.startswith("rowembed: OperationalError:")
    assert "Traceback" not in result.stderr


def test_unknown_vectorizer(database_url: str) -> None:
    result = rowembed("search", "no_such_thing", "text", database_url=database_url)
    assert result.returncode == 1
    assert "no vectorizer 'no_such_thing'" in result.stderr


def test_search_with_rerank_and_calibrate_from_the_shell(
    conn: psycopg.Connection[Any], database_url: str, encoder: Encoder, cross_encoder_dir: Any
) -> None:
    from rowembed.workers.runtime import Reranker

    conn.execute("CREATE TABLE cli_rerank (id int PRIMARY KEY, body text, lang text)")
    bodies = [
        "Cats sleep most of the day.",
        "Dogs like long walks.",
        "Kittens play with yarn.",
        "Bonds pay interest.",
        "A cat naps in the sun.",
    ]
    for i, body in enumerate(bodies):
        conn.execute("INSERT INTO cli_rerank VALUES (%s, %s, %s)", [i, body, "en"])
    v = create_vectorizer(
        conn, "cli_rerank", ["body"], model=MODEL, rerank_model=str(cross_encoder_dir)
    )
    run_batch(conn, Queue(v), encoder, limit=10, lease_seconds=60)
    result = rowembed(
        "search",
        "cli_rerank",
        "sleeping cats",
        "--rerank",
        "--k",
        "3",
        "--candidates",
        "5",
        "--min-similarity",
        "-1",
        "--local",
        "--json",
        "--filter",
        '{"lang": "en"}',
        database_url=database_url,
        loglevel=None,  # the default: the answer alone, no model-load lines
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Reranker.load(str(cross_encoder_dir), device="cpu").score("sleeping cats", bodies)
    best = sorted(range(5), key=lambda i: -expected.scores[i])[:3]
    assert [r["row"]["id"] for r in rows] == best
    assert all(r["similarity"] is not None for r in rows)
    assert [round(r["rerank_score"], 4) for r in rows] == [
        round(float(expected.scores[i]), 4) for i in best
    ]

    calibrated = rowembed(
        "calibrate",
        "cli_rerank",
        "--query",
        "cats",
        "--query",
        "money",
        "--sample",
        "5",
        "--k",
        "2",
        "--local",
        "--apply",
        database_url=database_url,
    )
    assert calibrated.returncode == 0, calibrated.stderr
    assert "suggested" in calibrated.stdout and "random" in calibrated.stdout
    (threshold,) = conn.execute(
        "SELECT min_similarity FROM rowembed.vectorizer WHERE name = 'cli_rerank'"
    ).fetchone()
    assert f"set to {threshold}" in calibrated.stdout
    # From the rows alone: a suggestion with its caveat, never applied.
    rows_only = rowembed("calibrate", "cli_rerank", "--sample", "5", "--local",
                         database_url=database_url)  # fmt: skip
    assert rows_only.returncode == 0 and "suggested" in rows_only.stdout
    assert "threshold from the table's own rows hid" in rows_only.stderr
    refused = rowembed("calibrate", "cli_rerank", "--apply", database_url=database_url)
    assert refused.returncode == 2
    assert refused.stderr.startswith("rowembed: --apply needs --query TEXT: rows are more alike")


def test_backfill_and_status_from_the_shell(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    conn.execute("CREATE TABLE cli_backfill (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO cli_backfill SELECT i, 'row ' || i FROM generate_series(1, 30) i")
    create_vectorizer(conn, "cli_backfill", ["body"], model=MODEL, backfill=False)
    started = rowembed("backfill", "cli_backfill", "--no-wait", database_url=database_url)
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    again = rowembed("backfill", "cli_backfill", "--no-wait", database_url=database_url)
    assert "already running" in again.stdout
    status = rowembed("status", database_url=database_url)
    line = next(x for x in status.stdout.splitlines() if x.startswith("cli_backfill"))
    assert "running: 0 rows scanned" in line
    cancelled = rowembed("backfill", "cli_backfill", "--cancel", database_url=database_url)
    assert "cancelled" in cancelled.stdout


def test_alter_status_and_cancel_from_the_shell(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    conn.execute("CREATE TABLE cli_alter (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO cli_alter SELECT i, 'row ' || i FROM generate_series(1, 5) i")
    create_vectorizer(conn, "cli_alter", ["body"], model=MODEL)
    altered = rowembed(
        "alter",
        "cli_alter",
        "--chunking",
        "tokens",
        "--chunk-tokens",
        "64",
        database_url=database_url,
    )
    assert altered.returncode == 0, altered.stderr
    assert "rebuilding as cli_alter.next" in altered.stdout
    (next_,) = conn.execute(
        "SELECT chunking, chunk_tokens FROM rowembed.vectorizer WHERE name = 'cli_alter.next'"
    ).fetchall()
    assert next_ == ("tokens", 64)
    status = rowembed("status", database_url=database_url).stdout
    assert "being rebuilt as cli_alter.next" in status
    assert "replaces cli_alter: 5 rows of its backfill wait to be embedded" in status
    # `alter --wait` alone attaches to the rebuild running, and ends when it does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROWEMBED_")}
    env["ROWEMBED_DATABASE_URL"] = database_url
    waiting = subprocess.Popen(
        [sys.executable, "-m", "rowembed", "--loglevel", "WARNING", "alter", "cli_alter", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None
    first = waiting.stdout.readline()
    assert "waiting for the rebuild in progress as cli_alter.next" in first
    cancelled = rowembed("alter", "cli_alter", "--cancel", database_url=database_url)
    assert "rebuild cancelled" in cancelled.stdout
    rest, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and "cli_alter: rebuild ended" in rest
    nothing = rowembed("alter", "cli_alter", "--wait", database_url=database_url)
    assert nothing.stdout.strip() == "cli_alter: no rebuild in progress"
    assert conn.execute(
        "SELECT count(*) FROM rowembed.vectorizer WHERE name LIKE 'cli_alter%'"
    ).fetchone() == (1,)


def test_index_defer_and_build_from_the_shell(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    conn.execute("CREATE TABLE cli_index (id int PRIMARY KEY, body text)")
    create_vectorizer(conn, "cli_index", ["body"], model=MODEL, storage="halfvec")
    deferred = rowembed("index", "cli_index", "--defer", database_url=database_url)
    assert deferred.returncode == 0, deferred.stderr
    assert "halfvec(384), index hnsw: deferred until the backlog drains" in deferred.stdout
    status = rowembed("status", database_url=database_url)
    line = next(x for x in status.stdout.splitlines() if x.startswith("cli_index"))
    assert line.endswith(
        "halfvec(384), hnsw: deferred until the backlog drains (searches scan exactly meanwhile)"
    )
    built = rowembed("index", "cli_index", "--build", database_url=database_url)
    assert built.returncode == 0, built.stderr
    assert "index of cli_index built in" in built.stdout
    assert built.stdout.strip().endswith("index hnsw: built")
    again = rowembed("index", "cli_index", "--build", database_url=database_url)
    assert "index of cli_index: nothing to build" in again.stdout
    # An index dropped by hand is missing, and --build builds it again.
    (index,) = conn.execute(
        "SELECT rowembed._vector_index(v)::text FROM rowembed.vectorizer v WHERE name = 'cli_index'"
    ).fetchone()
    conn.execute(f"DROP INDEX {index}")
    rebuilt = rowembed("index", "cli_index", "--build", database_url=database_url)
    assert "index of cli_index built in" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    assert rebuilt.stdout.strip().endswith("index hnsw: built")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "text", "--k", "0"], "argument --k: 0 is not between 1 and 10000"),
        (["search", "x", "text", "--k", "2147483647"], "argument --k: 2147483647 is not between"),
        (["search", "x", "text", "--min-similarity", "nan"], "--min-similarity: nan is not"),
        (["search", "x", "text", "--filter", "[1, 2]"], "'[1, 2]' is not a JSON object"),
        (["search", "x", "text", "--filter", "{bad"], "'{bad' is not JSON"),
        (["calibrate", "x", "--sample", "0"], "argument --sample: 0 is not between 1 and"),
        (["--database-url", "mysql://u:secret@h/db", "status"], "is a mysql:// URL"),
        (["--database-url", "postgresql:///x", "--redis-url", "http://h", "worker"], "http://"),
    ],
)
def test_bad_arguments_are_one_line_naming_them(args: list[str], message: str) -> None:
    result = rowembed(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr


@pytest.mark.parametrize("command", ["errors", "retry"])
def test_an_unknown_vectorizer_is_worded_alike_by_every_command(
    database_url: str, command: str
) -> None:
    result = rowembed(command, "no_such_thing", database_url=database_url)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rowembed: VectorizerNotFound: no vectorizer 'no_such_thing'")


def test_a_search_no_worker_answers_fails_soon_saying_so(
    conn: psycopg.Connection[Any], database_url: str, redis_url: str
) -> None:
    conn.execute("CREATE TABLE unserved (id int PRIMARY KEY, body text)")
    create_vectorizer(conn, "unserved", ["body"], model=MODEL, backfill=False)
    result = rowembed(
        "--redis-url", redis_url, "search", "unserved", "text", "--timeout", "2",
        database_url=database_url,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no worker answered on the query queue (rowembed.query) within 2 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("local", [[], ["--local"]])
def test_an_empty_query_is_refused_in_one_line(database_url: str, local: list[str]) -> None:
    result = rowembed("search", "anything", "  ", *local, database_url=database_url)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "rowembed: the query text is empty: give the text to search for"
    )


@pytest.mark.parametrize("command", ["worker", "dispatcher"])
def test_an_unreachable_broker_stops_a_worker_or_dispatcher_at_start(
    database_url: str, command: str
) -> None:
    """One line naming where (never the password), exit 1: not "ready" and
    retries forever."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROWEMBED_")}
    env |= {"ROWEMBED_DATABASE_URL": database_url,
            "ROWEMBED_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "rowembed", "--loglevel", "WARNING", command],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rowembed: BrokerUnreachable: cannot reach the broker at 127.0.0.1:1"), (
        line
    )
    assert "s3cret" not in result.stderr
