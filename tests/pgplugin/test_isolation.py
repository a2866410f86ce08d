"""One broken vectorizer, or one the role does not hold, never stops the others."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import backfill, create_vectorizer, migrate
from rowembed.pgplugin.backfill import top_up_backfills
from rowembed.pgplugin.queue import vectorizers_with_work
from rowembed.pgplugin.status import errors, status
from rowembed.pgplugin.vectorizers import Vectorizer

Conn = psycopg.Connection[Any]


def docs(conn: Conn, name: str, rows: int = 3) -> Vectorizer:
    t = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT i, 'text ' || i FROM generate_series(1, %s) i").format(t),
        [rows],
    )
    return create_vectorizer(conn, name, ["body"], model="m", dimensions=3)


def fail_one_row(conn: Conn, v: Vectorizer) -> None:
    conn.execute(sql.SQL("UPDATE {} SET last_error = 'model failed' WHERE id = 1").format(v.queue))


def test_a_worker_role_of_one_vectorizer_works_beside_others(own_db: Conn) -> None:
    """grant_worker(role, 'mine'): the sweep, status, errors and the backfill
    work for that role, and show it its vectorizer only."""
    mine, theirs = docs(own_db, "mine"), docs(own_db, "theirs")
    fail_one_row(own_db, mine)
    fail_one_row(own_db, theirs)
    role = f"worker_of_{own_db.info.dbname}"
    own_db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s, 'mine')", [role])
    own_db.execute("SELECT rowembed.start_backfill('theirs')")
    own_db.execute("SELECT rowembed.start_backfill('mine')")
    with own_db.transaction():
        own_db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        assert vectorizers_with_work(own_db) == [(mine.id, False)]  # backfill rows
        assert [s.name for s in status(own_db)] == ["mine"]
        assert [e.vectorizer for e in errors(own_db)] == ["mine"]
        top_up_backfills(own_db, chunk=100)
    assert own_db.execute(
        "SELECT vectorizer_id, state FROM rowembed.backfill ORDER BY vectorizer_id"
    ).fetchall() == [(mine.id, "done"), (theirs.id, "running")]


RENAMED = "column body of public.broken was renamed or dropped"


@pytest.mark.parametrize(
    ("breakage", "problem", "after_migrate"),
    [
        ("DROP TABLE {}", "its source table was dropped", "its source table was dropped"),
        ("ALTER TABLE {} RENAME COLUMN body TO text", RENAMED, RENAMED),
        ("ALTER TABLE {} DROP COLUMN body CASCADE", RENAMED, RENAMED),
        ("DROP TRIGGER rowembed_{id}_update ON {}", "its update trigger is missing", None),
        (
            "DROP TABLE public.rowembed_queue_{id}",
            "its queue table was dropped",
            "its queue table was dropped",
        ),
    ],
)
def test_a_broken_vectorizer_is_shown_and_the_others_go_on(
    own_db: Conn,
    breakage: str,
    problem: str,
    after_migrate: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, healthy = docs(own_db, "broken"), docs(own_db, "healthy")
    own_db.execute("SELECT rowembed.start_backfill('broken')")  # interrupted by the breakage
    own_db.execute("SELECT rowembed.start_backfill('healthy')")
    fail_one_row(own_db, broken)
    own_db.execute(
        sql.SQL(breakage.replace("{id}", str(broken.id))).format(sql.Identifier("broken"))
    )

    assert vectorizers_with_work(own_db) == [(healthy.id, False)]
    shown = {s.name: s for s in status(own_db)}
    assert shown["healthy"].problem is None and shown["healthy"].queued == 3
    assert (shown["broken"].problem or "").startswith(problem), shown["broken"].problem
    errors(own_db)  # no exception
    top_up_backfills(own_db, chunk=100)
    assert own_db.execute(
        "SELECT state FROM rowembed.backfill WHERE vectorizer_id = %s", [healthy.id]
    ).fetchone() == ("done",)
    assert caplog.records == []  # the broken backfill was skipped, not tried and failed
    migrate(own_db)  # regenerates every trigger it can; the broken one is reported
    shown = {s.name: s for s in status(own_db)}
    assert shown["healthy"].problem is None
    assert shown["broken"].problem == after_migrate


def test_one_failing_backfill_does_not_stop_the_others(
    own_db: Conn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A table altered between the check and the step: that backfill's error is
    logged, and the next backfill is stepped."""
    first, second = docs(own_db, "first"), docs(own_db, "second")
    for v in (first, second):
        own_db.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    real_top_up = backfill._top_up

    def top_up(conn: Conn, vectorizer_id: int, chunk: int, seconds: float) -> None:
        if vectorizer_id == first.id:
            conn.execute("SELECT * FROM no_such_table")
        real_top_up(conn, vectorizer_id, chunk, seconds)

    monkeypatch.setattr(backfill, "_top_up", top_up)
    top_up_backfills(own_db, chunk=100)
    assert own_db.execute(
        "SELECT vectorizer_id, state FROM rowembed.backfill ORDER BY vectorizer_id"
    ).fetchall() == [(first.id, "running"), (second.id, "done")]
    assert ["no_such_table" in r.getMessage() for r in caplog.records] == [True]


def test_a_tenant_locking_her_own_queue_delays_no_one_else(own_db: Conn) -> None:
    """The loops shared by every tenant (the dispatcher's polls and sweep, status,
    index builds, model-change switches) wait at most half a second on one
    vectorizer's locked table, then go on without it."""
    import time

    from rowembed.pgplugin import wakeups
    from rowembed.pgplugin.indexes import indexes_to_build
    from rowembed.pgplugin.vectorizers import complete_alters

    locked, free = docs(own_db, "locked"), docs(own_db, "free")
    own_db.execute("SELECT rowembed.defer_index('free')")
    own_db.execute("INSERT INTO free VALUES (10, 'a live change'), (11, 'another')")
    own_db.execute("SELECT rowembed.fold_changes()")
    own_db.execute(sql.SQL("DELETE FROM {} WHERE priority = 1").format(free.queue))  # no backlog
    own_db.execute("INSERT INTO free VALUES (12, 'logged, not folded')")
    own_db.execute("SET statement_timeout = '20s'")  # without the bound, a wait is a failure
    with psycopg.connect(own_db.info.dsn) as holder:
        for table in (locked.queue, locked.change_log):
            holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        started = time.monotonic()
        assert (free.id, True) in vectorizers_with_work(own_db)
        assert free.id in wakeups.logged_changes(own_db)
        assert "free" in indexes_to_build(own_db)
        complete_alters(own_db)
        by_name = {s.name: s for s in status(own_db)}
        elapsed = time.monotonic() - started
        holder.rollback()
    assert by_name["free"].problem is None and by_name["free"].queued == 3
    assert "lock timeout" in (by_name["locked"].problem or "")
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("column", ["enqueued_at", "priority", "failed_at", "seq"])
def test_a_tenant_altering_her_own_queue_delays_no_one_else(own_db: Conn, column: str) -> None:
    """Her queue with a renamed column (and her index deferred): each shared loop
    skips her vectorizer, reports it, and serves the others."""
    from rowembed.pgplugin import wakeups
    from rowembed.pgplugin.indexes import indexes_to_build
    from rowembed.pgplugin.vectorizers import complete_alters

    odd, free = docs(own_db, "odd"), docs(own_db, "free")
    for v in (odd, free):
        own_db.execute("SELECT rowembed.defer_index(%s)", [v.name])
        own_db.execute(sql.SQL("DELETE FROM {}").format(v.queue))  # no backlog
    own_db.execute("INSERT INTO free VALUES (12, 'logged, not folded')")
    own_db.execute("INSERT INTO odd VALUES (12, 'logged, not folded')")
    own_db.execute(
        sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO renamed").format(
            odd.queue, sql.Identifier(column)
        )
    )
    assert (free.id, True) in vectorizers_with_work(own_db)
    assert free.id in wakeups.logged_changes(own_db)
    assert "free" in indexes_to_build(own_db)
    complete_alters(own_db)
    top_up_backfills(own_db, chunk=100)
    by_name = {s.name: s for s in status(own_db)}
    assert by_name["free"].problem is None and by_name["free"].queued == 1
    assert by_name["odd"].problem is not None
    errors(own_db)


def test_a_slow_backfill_step_delays_no_one_else(
    own_db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """A step over its bound (here its owner's trigger on her queue sleeps) is
    cancelled and logged; the next backfill is stepped at once."""
    import time

    slow, quick = docs(own_db, "slow"), docs(own_db, "quick")
    own_db.execute(
        "CREATE FUNCTION public.dawdle() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$"
    )
    own_db.execute(
        sql.SQL(
            "CREATE TRIGGER dawdle AFTER INSERT ON {} FOR EACH STATEMENT"
            " EXECUTE FUNCTION public.dawdle()"
        ).format(slow.queue)
    )
    for v in (slow, quick):
        own_db.execute(sql.SQL("DELETE FROM {}").format(v.queue))
        own_db.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    started = time.monotonic()
    top_up_backfills(own_db, chunk=100, step_seconds=0.5)
    assert time.monotonic() - started < 10
    assert own_db.execute(
        "SELECT vectorizer_id, state FROM rowembed.backfill ORDER BY vectorizer_id"
    ).fetchall() == [(slow.id, "running"), (quick.id, "done")]
    assert ["statement timeout" in r.getMessage() for r in caplog.records] == [True]
