"""Backfills: chunked, resumable, behind live changes, never doubled."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.backfill import top_up_backfills
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL

Conn = psycopg.Connection[Any]


def make(conn: Conn, table: str, rows: int) -> Vectorizer:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT i, 'row number ' || i FROM generate_series(0, %s) i").format(
            sql.Identifier(table)
        ),
        [rows - 1],
    )
    return create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)


def queued_keys(conn: Conn, v: Vectorizer, priority: int | None = None) -> list[int]:
    where = sql.SQL("") if priority is None else sql.SQL(" WHERE priority = {}").format(priority)
    return [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT id FROM {}").format(v.queue) + where + sql.SQL(" ORDER BY id")
        )
    ]


def backfill_row(conn: Conn, v: Vectorizer) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT state, scanned, queued, last_key FROM rowembed.backfill WHERE vectorizer_id = %s",
        [v.id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def step(conn: Conn, v: Vectorizer, chunk: int) -> int:
    return conn.execute("SELECT rowembed.backfill_step(%s, %s)", [v.id, chunk]).fetchone()[0]  # type: ignore[index]


def test_a_backfill_killed_halfway_resumes_where_it_stopped(conn: Conn, table: str) -> None:
    v = make(conn, table, 95)
    assert conn.execute("SELECT rowembed.start_backfill(%s)", [v.name]).fetchone() == ("started",)
    for _ in range(4):
        assert step(conn, v, 10) == 10
    assert backfill_row(conn, v) == ("running", 40, 40, {"id": 39})
    # The stepping process dies here; any dispatcher later carries on from the cursor.
    top_up_backfills(conn, chunk=100)
    assert backfill_row(conn, v)[:3] == ("done", 95, 95)
    assert queued_keys(conn, v) == list(range(95))  # each row once


def test_rows_already_embedded_are_skipped_and_stale_ones_found(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = make(conn, table, 30)
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    step(conn, v, 100)
    while run_batch(conn, Queue(v), encoder, limit=64, lease_seconds=60).claimed:
        pass
    # Texts changed behind rowembed's back (triggers off): their embeddings are stale.
    t = sql.Identifier(table)
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = 'edited ' || id WHERE id IN (3, 7, 11)").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(t))
    assert conn.execute("SELECT rowembed.start_backfill(%s)", [v.name]).fetchone() == ("started",)
    assert step(conn, v, 100) == 3
    assert queued_keys(conn, v) == [3, 7, 11]


def test_a_backfill_removes_embeddings_of_rows_deleted_or_blanked_with_triggers_off(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    """session_replication_role = replica (as pg_restore --disable-triggers does)
    hides deletes from the triggers: the backfill finds the orphans in every
    chunk's key range, the last chunk's open end included, and the worker
    deletes them."""
    v = make(conn, table, 30)
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    step(conn, v, 100)
    while run_batch(conn, Queue(v), encoder, limit=64, lease_seconds=60).claimed:
        pass
    t = sql.Identifier(table)
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (4, 12, 28, 29)").format(t))
        conn.execute(sql.SQL("UPDATE {} SET body = e' \\t\\n' WHERE id = 20").format(t))
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    while step(conn, v, 10):
        pass
    assert backfill_row(conn, v)[0] == "done"
    assert queued_keys(conn, v) == [4, 12, 20, 28, 29]
    while run_batch(conn, Queue(v), encoder, limit=64, lease_seconds=60).claimed:
        pass
    embedded = [
        r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(v.destination))
    ]
    assert embedded == [i for i in range(30) if i not in (4, 12, 20, 28, 29)]


def test_two_backfills_do_not_double_the_work(conn: Conn, table: str) -> None:
    v = make(conn, table, 25)
    assert conn.execute("SELECT rowembed.start_backfill(%s)", [v.name]).fetchone() == ("started",)
    assert conn.execute("SELECT rowembed.start_backfill(%s)", [v.name]).fetchone() == (
        "already running",
    )
    step(conn, v, 10)
    seqs = conn.execute(sql.SQL("SELECT id, seq FROM {} ORDER BY id").format(v.queue)).fetchall()
    # A second backfill once the first is done: the rows are queued already.
    while backfill_row(conn, v)[0] == "running":
        step(conn, v, 10)
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    while backfill_row(conn, v)[0] == "running":
        step(conn, v, 10)
    assert backfill_row(conn, v)[:3] == ("done", 25, 0)  # all 25 were queued by the first
    after = dict(conn.execute(sql.SQL("SELECT id, seq FROM {}").format(v.queue)).fetchall())
    assert all(after[key] == seq for key, seq in seqs)  # entries untouched, not re-queued
    assert len(after) == 25


def test_live_changes_during_a_backfill_come_first(conn: Conn, table: str) -> None:
    v = make(conn, table, 50)
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    step(conn, v, 100)
    t = sql.Identifier(table)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, 'fresh row')").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = 'fresh edit' WHERE id = 42").format(t))
    queue = Queue(v)
    seqs = queue.claim(conn, 2, 60).seqs
    claimed = {r.text for r in queue.read(conn, seqs)}
    assert claimed == {"fresh row", "fresh edit"}


def test_cancel_stops_the_backfill_and_keeps_live_changes(conn: Conn, table: str) -> None:
    v = make(conn, table, 40)
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    step(conn, v, 20)
    conn.execute(sql.SQL("UPDATE {} SET body = 'live' WHERE id = 5").format(sql.Identifier(table)))
    assert conn.execute("SELECT rowembed.cancel_backfill(%s)", [v.name]).fetchone() == (19,)
    assert step(conn, v, 20) == 0
    assert backfill_row(conn, v)[0] == "cancelled"
    assert queued_keys(conn, v) == [5]


def test_create_vectorizer_queues_a_small_table_at_once(conn: Conn, table: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT i, 'x' || i FROM generate_series(1, 200) i").format(
            sql.Identifier(table)
        )
    )
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    assert len(queued_keys(conn, v, priority=1)) == 200
    status = conn.execute("SELECT backfill FROM rowembed.status() WHERE id = %s", [v.id]).fetchone()
    assert status is not None and status[0].startswith("done: 200 rows scanned")


def test_backfill_progress_gives_no_row_estimate_before_the_table_is_analyzed(
    conn: Conn, table: str
) -> None:
    """reltuples is -1 until the first ANALYZE: "34 rows scanned of about 0" was
    wrong; then the estimate shows."""
    v = make(conn, table, 34)
    conn.execute(
        sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table))
    )
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    conn.execute("SELECT rowembed.backfill_step(%s, 100)", [v.id])
    progress = "SELECT backfill FROM rowembed.status() WHERE id = %s"
    assert conn.execute(progress, [v.id]).fetchone() == ("done: 34 rows scanned, 34 queued",)
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    assert conn.execute(progress, [v.id]).fetchone() == (
        "done: 34 rows scanned of about 34, 34 queued",
    )
