"""The dispatcher: polls of the change clock, wake-ups and the sweep become hints
(against the real database); ChangeWatch's rule alone."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg import sql

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.wakeups import ChangeClock
from rowembed.workers.dispatcher import ChangeWatch, Dispatcher

from ..conftest import MODEL, wait_until


def test_changes_and_sweep_become_hints(
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
        conn.execute(sql.SQL("DELETE FROM {}").format(v.queue))
        conn.execute(sql.SQL("DELETE FROM {}").format(v.change_log))
        conn.execute("SELECT rowembed.start_backfill(%s)", [table])
        wait_until(lambda: (v.id, False) in hints, timeout=10)
        conn.execute("SELECT rowembed.backfill_step(%s, 10)", [v.id])
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()

    # Nothing is heard while no dispatcher runs: at its start it finds the work,
    # and says whether live changes are among it.
    hints.clear()
    thread = threading.Thread(target=dispatcher.run, args=(stop := threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: set(hints) == {(v.id, False)}, timeout=10)  # backfill rows only
    finally:
        stop.set()
        thread.join(10)
    conn.execute(f"INSERT INTO {table} VALUES (3, 'c')")
    hints.clear()
    thread = threading.Thread(target=dispatcher.run, args=(stop := threading.Event(),))
    thread.start()
    try:
        wait_until(lambda: set(hints) == {(v.id, True)}, timeout=10)
    finally:
        stop.set()
        thread.join(10)


def test_rows_backing_off_are_not_work_yet(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    assert [
        r for r in conn.execute("SELECT * FROM rowembed.vectorizers_with_work()") if r[0] == v.id
    ] == [(v.id, True)]  # logged, not queued yet
    conn.execute("SELECT rowembed.fold_changes()")  # as a worker's claim does

    def work() -> list[tuple[int, bool]]:
        rows = conn.execute("SELECT id, changes FROM rowembed.vectorizers_with_work()")
        return [r for r in rows.fetchall() if r[0] == v.id]

    assert work() == [(v.id, True)]
    # What a failed attempt leaves: no claim, a back-off in lease_until.
    conn.execute(
        f"UPDATE public.rowembed_queue_{v.id} SET attempts = 1, last_error = 'x',"
        " lease_until = now() + interval '1 hour'"
    )
    assert work() == []
    conn.execute(
        f"UPDATE public.rowembed_queue_{v.id} SET lease_until = now() - interval '1 second'"
    )
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


def test_a_change_committed_after_a_newer_one_was_seen_is_hinted(
    conn: psycopg.Connection[Any], database_url: str, table: str
) -> None:
    """Transactions commit out of the order of their seqs: a change whose
    transaction ends after a newer change was seen (and is still queued) moves
    no mark, and is found once the last open transaction ends."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    hints: list[int] = []
    stop = threading.Event()
    dispatcher = Dispatcher(
        database_url,
        lambda vid, urgent: hints.append(vid) if vid == v.id and urgent else None,
        sweep_seconds=3600,
    )
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    try:
        wait_until(dispatcher.listening.is_set, timeout=10)
        with psycopg.connect(database_url) as late:
            late.execute(f"INSERT INTO {table} VALUES (1, 'drew the older seq')")
            conn.execute(f"INSERT INTO {table} VALUES (2, 'committed first')")
            wait_until(lambda: v.id in hints, timeout=10)
            stop.wait(0.5)  # the dispatcher has looked again, and nothing moved
            hints.clear()
            late.commit()
        wait_until(lambda: v.id in hints, timeout=5)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def looks(*answers: list[int]) -> tuple[list[int], Any]:
    """A look at the change logs that answers in turn, and the list its calls are counted in."""
    calls: list[int] = []

    def logged() -> list[int]:
        calls.append(1)
        return answers[len(calls) - 1]

    return calls, logged


def test_change_watch_looks_only_while_the_clock_says_so() -> None:
    watch = ChangeWatch()
    calls, logged = looks([1], [1, 2])
    assert watch.poll(ChangeClock(seq=10, xmin=100, xmax=100), logged) == [1]
    assert watch.poll(ChangeClock(seq=10, xmin=101, xmax=101), logged) == []  # idle
    assert len(calls) == 1
    assert watch.poll(ChangeClock(seq=12, xmin=105, xmax=105), logged) == [1, 2]
    assert len(calls) == 2


def test_change_watch_looks_until_the_transactions_that_drew_a_seq_have_ended() -> None:
    watch = ChangeWatch()
    calls, logged = looks([1, 2], [], [1])
    # Transaction 90 drew a seq and is still open (xmin 90 < xmax 95).
    assert watch.poll(ChangeClock(seq=7, xmin=90, xmax=95), logged) == [1, 2]
    assert watch.poll(ChangeClock(seq=7, xmin=90, xmax=96), logged) == []
    # It ended: the last look finds what it committed, then quiet.
    assert watch.poll(ChangeClock(seq=7, xmin=96, xmax=97), logged) == [1]
    assert watch.poll(ChangeClock(seq=7, xmin=97, xmax=97), logged) == []
    assert len(calls) == 3
