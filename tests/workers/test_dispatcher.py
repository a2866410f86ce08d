"""The dispatcher against the real database: wake-ups and the sweep become hints."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from rowembed.pgplugin import create_vectorizer
from rowembed.workers.dispatcher import Dispatcher

from ..conftest import MODEL, wait_until


def test_notify_and_sweep_become_hints(
    conn: psycopg.Connection[Any], database_url: str, table: str
) -> None:
    """Live changes give urgent hints, backfills background ones."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    hints: list[tuple[int, bool]] = []  # this test's; other tests' tables share the database
    stop = threading.Event()
    dispatcher = Dispatcher(
        database_url,
        lambda *hint: hints.append(hint) if hint[0] == v.id else None,
        sweep_seconds=3600,
    )
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    try:
        wait_until(dispatcher.listening.is_set, timeout=10)
        assert not hints  # the start-up sweep found the queue empty
        conn.execute(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
        wait_until(lambda: (v.id, True) in hints, timeout=10)
        conn.execute(f"DELETE FROM rowembed.queue_{v.id}")
        conn.execute("SELECT rowembed.start_backfill(%s)", [table])
        wait_until(lambda: (v.id, False) in hints, timeout=10)
        conn.execute("SELECT rowembed.backfill_step(%s, 10)", [v.id])
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()

    # Notifications are lost while no dispatcher listens: the start-up sweep finds
    # the work, and says whether live changes are among it.
    hints.clear()
    thread = threading.Thread(target=dispatcher.run, args=(stop := threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: hints == [(v.id, False)], timeout=10)  # backfill rows only
    finally:
        stop.set()
        thread.join(10)
    conn.execute(f"INSERT INTO {table} VALUES (3, 'c')")
    hints.clear()
    thread = threading.Thread(target=dispatcher.run, args=(stop := threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: hints == [(v.id, True)], timeout=10)
    finally:
        stop.set()
        thread.join(10)


def test_rows_backing_off_are_not_work_yet(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")

    def work() -> list[tuple[int, bool]]:
        rows = conn.execute("SELECT id, changes FROM rowembed.vectorizers_with_work()")
        return [r for r in rows.fetchall() if r[0] == v.id]

    assert work() == [(v.id, True)]
    # What a failed attempt leaves: no claim, a back-off in lease_until.
    conn.execute(
        f"UPDATE rowembed.queue_{v.id} SET attempts = 1, last_error = 'x',"
        " lease_until = now() + interval '1 hour'"
    )
    assert work() == []
    conn.execute(f"UPDATE rowembed.queue_{v.id} SET lease_until = now() - interval '1 second'")
    assert work() == [(v.id, True)]


def test_unreachable_database_is_retried_until_stopped() -> None:
    stop = threading.Event()
    dispatcher = Dispatcher(
        "postgresql://nobody@/x?host=/nonexistent", lambda _: None, retry_max_seconds=0.1
    )
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    stop.wait(0.5)
    assert thread.is_alive()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
