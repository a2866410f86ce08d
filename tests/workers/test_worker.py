"""Through a real Celery worker process, real Redis and real PostgreSQL with pgvector."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL, Stack, WorkerProcess, wait_until

Conn = psycopg.Connection[Any]


def embedding_of(conn: Conn, v: Vectorizer, where: sql.Composable, params: list[Any]) -> Any:
    row = conn.execute(
        sql.SQL("SELECT {}, embedded_at FROM {} WHERE ").format(
            sql.Identifier(v.embedding_column), v.destination
        )
        + where,
        params,
    ).fetchone()
    return None if row is None else (row[0].to_numpy(), row[1])


def wait_for_vector(
    conn: Conn, v: Vectorizer, expected: np.ndarray, where: sql.Composable, params: list[Any]
) -> Any:
    def current() -> Any:
        found = embedding_of(conn, v, where, params)
        return found if found is not None and np.abs(found[0] - expected).max() < 1e-5 else None

    return wait_until(current, timeout=60)


def test_insert_update_delete_are_reflected(
    conn: Conn, worker: WorkerProcess, encoder: Encoder, table: str
) -> None:
    t = sql.Identifier(table)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY, title text, body text,"
            " views int NOT NULL DEFAULT 0)"
        ).format(t)
    )
    v = create_vectorizer(conn, table, ["title", "body"], model=MODEL)
    by_id = sql.SQL("id = %s")

    conn.execute(
        sql.SQL("INSERT INTO {} (id, title, body) VALUES (1, 'Cats', 'Cats purr.')").format(t)
    )
    wait_for_vector(conn, v, encoder.encode(["Cats\nCats purr."]).vectors[0], by_id, [1])

    conn.execute(sql.SQL("UPDATE {} SET body = 'Cats sleep all day.' WHERE id = 1").format(t))
    _, embedded_at = wait_for_vector(
        conn, v, encoder.encode(["Cats\nCats sleep all day."]).vectors[0], by_id, [1]
    )

    conn.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = 1").format(t))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.queue)).fetchone() == (0,)
    time.sleep(2.5)  # longer than the worker's sweep interval
    assert embedding_of(conn, v, by_id, [1])[1] == embedded_at  # not re-embedded

    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(t))
    assert embedding_of(conn, v, by_id, [1]) is None
    # Batches name their worker process and its device (metrics label workers so).
    workers = conn.execute(
        "SELECT DISTINCT worker FROM rowembed.batch_stats WHERE vectorizer_id = %s", [v.id]
    ).fetchall()
    assert workers and all(w.endswith("/cpu") and ":" in w for (w,) in workers)


def test_existing_rows_are_backfilled(conn: Conn, worker: WorkerProcess, table: str) -> None:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, 'document number ' || i FROM generate_series(1, 300) i"
        ).format(t)
    )
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    wait_until(
        lambda: conn.execute(
            sql.SQL("SELECT count(*) = 300 FROM {}").format(v.destination)
        ).fetchone()[0],
        timeout=120,
    )
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.queue)).fetchone() == (0,)


def test_composite_key_and_quoted_names(
    conn: Conn, worker: WorkerProcess, encoder: Encoder
) -> None:
    conn.execute('CREATE SCHEMA IF NOT EXISTS "Worker Schema"')
    conn.execute(
        'CREATE TABLE "Worker Schema"."Mixed ""Case"" Docs" ("Tenant" text, "Doc No" int,'
        ' "Body Text" text, "Title" text, PRIMARY KEY ("Tenant", "Doc No"))'
    )
    v = create_vectorizer(
        conn,
        '"Worker Schema"."Mixed ""Case"" Docs"',
        ["Title", "Body Text"],
        model=MODEL,
        separator=" -- ",
        embedding_column="Vec tor",
    )
    conn.execute(
        'INSERT INTO "Worker Schema"."Mixed ""Case"" Docs" VALUES'
        " ('acme', 1, 'Rain falls.', 'Weather'), ('acme', 2, 'Goals scored.', 'Sport'),"
        " ('zeta', 1, 'Stocks rise.', 'Money')"
    )
    key = sql.SQL('"Tenant" = %s AND "Doc No" = %s')
    for tenant, number, text in [
        ("acme", 1, "Weather -- Rain falls."),
        ("acme", 2, "Sport -- Goals scored."),
        ("zeta", 1, "Money -- Stocks rise."),
    ]:
        wait_for_vector(conn, v, encoder.encode([text]).vectors[0], key, [tenant, number])
    conn.execute(
        'UPDATE "Worker Schema"."Mixed ""Case"" Docs" SET "Doc No" = 7 WHERE "Tenant" = \'zeta\''
    )
    moved = encoder.encode(["Money -- Stocks rise."]).vectors[0]
    wait_for_vector(conn, v, moved, key, ["zeta", 7])
    wait_until(lambda: embedding_of(conn, v, key, ["zeta", 1]) is None)


# A backlog big enough to keep a worker busy: with the soak tests.
@pytest.mark.soak
def test_another_tables_change_does_not_wait_for_a_backfill(stack: Stack) -> None:
    """One worker drains an 800-row backlog with a long task budget. A row
    inserted into another table meanwhile is embedded while most of the backlog
    is still queued; and the sweep's repeated hints for the backlog's own table
    do not make the worker hand back after every batch."""
    stack.worker("one", env={"ROWEMBED_TASK_SECONDS": "300", "ROWEMBED_BATCH_ROWS": "128"})
    words = " ".join(f"word{i}" for i in range(16))
    with connect(stack.pg.url) as conn:
        conn.execute("CREATE TABLE backlog (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO backlog SELECT i, concat_ws(' ', 'row', i, %s::text)"
            " FROM generate_series(1, 800) i",
            [words],
        )
        conn.execute("CREATE TABLE live (id int PRIMARY KEY, body text)")
        backlog = create_vectorizer(conn, "backlog", ["body"], model=MODEL)
        live = create_vectorizer(conn, "live", ["body"], model=MODEL)

        def count(v: Vectorizer) -> int:
            return conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(v.destination)
            ).fetchone()[0]  # type: ignore[index]

        wait_until(lambda: count(backlog) > 0, timeout=60)
        conn.execute("INSERT INTO live VALUES (1, 'a fresh change')")
        wait_until(lambda: count(live) == 1, timeout=120)
        # Counted in rows written before the live one, not in seconds: the same
        # on a busy machine. Two or three batches of 128 at most.
        before = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE embedded_at < (SELECT embedded_at FROM {})"
            ).format(backlog.destination, live.destination)
        ).fetchone()[0]  # type: ignore[index]
        assert before < 500, "the live change waited for the backlog"
        wait_until(lambda: count(backlog) == 800, timeout=300)
    reports = [
        line for line in stack.workers[0].log().splitlines() if "vectorizer backlog:" in line
    ]
    # One hand-back for the live table, then the rest in the same task (7 batches).
    assert len(reports) <= 3, reports


# A backlog big enough to keep a worker busy: with the soak tests.
@pytest.mark.soak
def test_searches_are_answered_while_a_backlog_drains(stack: Stack) -> None:
    """The default `rowembed worker` serves queries and reranks from a process
    of its own, its models loaded before it is ready: search_text() is answered
    while the embedding process holds a long task on a large backlog."""
    words = " ".join(f"word{i}" for i in range(120))
    with connect(stack.pg.url) as conn:
        conn.execute("CREATE TABLE backlog (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO backlog SELECT i, concat_ws(' ', 'row', i, %s::text)"
            " FROM generate_series(1, 4000) i",
            [words],
        )
        backlog = create_vectorizer(conn, "backlog", ["body"], model=MODEL)
        worker = stack.worker(
            "one", env={"ROWEMBED_TASK_SECONDS": "300", "ROWEMBED_BATCH_ROWS": "64"}
        )

        def count() -> int:
            return conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(backlog.destination)
            ).fetchone()[0]  # type: ignore[index]

        wait_until(lambda: count() > 0, timeout=60)
        for i in range(10):  # each text new: a worker embeds it
            found = conn.execute(
                "SELECT count(*) FROM rowembed.search_text(NULL::backlog, %s, 3, -1,"
                " timeout_seconds => 30)",
                [f"row {i} word7"],
            ).fetchone()
            assert found is not None and found[0] > 0
        assert count() < 4000, "the backlog drained before the searches: no overlap shown"
    log = worker.log()
    assert f"model {MODEL} loaded" in log
    assert log.index(f"model {MODEL} loaded") < log.index("query-")
    worker.kill()  # not SIGTERM: a warm shutdown would finish the 300-s task first
