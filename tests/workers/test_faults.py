"""The invariants (README, Guarantees) under real faults: killed workers, a restarted
Redis, a restarted PostgreSQL, duplicate hints, concurrent writers, poison rows,
and a least-privilege worker role. Each test gets its own PostgreSQL and Redis
(so restarting them disturbs nothing else) and its own worker processes: two
minutes in all, so they run as `make soak` (CI runs it after `make test`)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL, Stack, wait_until

pytestmark = pytest.mark.soak

Conn = psycopg.Connection[Any]
WORDS = [
    "river",
    "stone",
    "cloud",
    "engine",
    "violet",
    "market",
    "signal",
    "orchard",
    "copper",
    "winter",
    "lantern",
    "harbor",
    "meadow",
    "circuit",
    "glacier",
    "saddle",
    "thunder",
    "pepper",
    "canyon",
    "ribbon",
]


def docs_table(conn: Conn, rows: int, words: int = 12, seed: int = 0) -> None:
    rng = random.Random(seed)
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, secret text)")
    with conn.cursor().copy("COPY docs (id, body, secret) FROM STDIN") as copy:
        for i in range(rows):
            copy.write_row((i, f"{i} " + " ".join(rng.choices(WORDS, k=words)), "hidden"))


def assert_current(conn: Conn, v: Vectorizer, encoder: Encoder, sample: int = 20) -> None:
    """Invariant 1: every row's embedding is that of its current text (or the row is
    parked as failed), nothing is left queued, and no embedding outlives its row."""
    stale = conn.execute(
        sql.SQL("""
        SELECT s.id FROM docs s LEFT JOIN {dest} e USING (id)
        LEFT JOIN {queue} q ON q.id = s.id AND q.failed_at IS NOT NULL
        WHERE coalesce(btrim(s.body), '') <> ''
          AND e.text_hash IS DISTINCT FROM decode(md5(s.body), 'hex')
          AND q.id IS NULL
    """).format(dest=v.destination, queue=v.queue)
    ).fetchall()
    assert stale == []
    orphans = conn.execute(
        sql.SQL("SELECT e.id FROM {} e LEFT JOIN docs s USING (id) WHERE s.id IS NULL").format(
            v.destination
        )
    ).fetchall()
    assert orphans == []
    assert conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE failed_at IS NULL").format(v.queue)
    ).fetchone() == (0,)
    if v.chunked:
        assert_chunks_current(conn, v, encoder, sample)
        return
    rows = conn.execute(
        sql.SQL(
            "SELECT s.body, e.embedding FROM docs s JOIN {} e USING (id) ORDER BY random() LIMIT %s"
        ).format(v.destination),
        [sample],
    ).fetchall()
    expected = encoder.encode([body for body, _ in rows]).vectors
    for (_, stored), want in zip(rows, expected, strict=True):
        assert np.abs(stored.to_numpy() - want).max() < 1e-5


def assert_chunks_current(conn: Conn, v: Vectorizer, encoder: Encoder, sample: int) -> None:
    """A chunked row's chunks are numbered 0..n-1, one text_hash, the last ending
    at the text's end: no chunk of an older text left; a sample's vectors are
    the model's for each chunk's text."""
    bad = conn.execute(
        sql.SQL("""
        SELECT e.id FROM {} e JOIN docs s USING (id) GROUP BY e.id, s.body
        HAVING count(*) <> max(e.chunk) + 1 OR count(DISTINCT e.text_hash) <> 1
            OR max(e.chunk_end) <> length(s.body)
    """).format(v.destination)
    ).fetchall()
    assert bad == []
    rows = conn.execute(
        sql.SQL(
            "SELECT substr(s.body, e.chunk_start + 1, e.chunk_end - e.chunk_start), e.embedding"
            " FROM docs s JOIN {} e USING (id) ORDER BY random() LIMIT %s"
        ).format(v.destination),
        [sample],
    ).fetchall()
    expected = encoder.encode([text for text, _ in rows]).vectors
    for (_, stored), want in zip(rows, expected, strict=True):
        assert np.abs(stored.to_numpy() - want).max() < 1e-5


def drained(conn: Conn, v: Vectorizer) -> bool:
    return conn.execute(
        "SELECT queued + in_flight = 0 FROM rowembed.status() WHERE id = %s", [v.id]
    ).fetchone()[0]  # type: ignore[index]


def embedded_count(conn: Conn, v: Vectorizer) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.destination)).fetchone()[0]  # type: ignore[index]


def test_sigkill_mid_batch_loses_nothing_and_waits_for_no_lease(
    stack: Stack, encoder: Encoder
) -> None:
    with connect(stack.pg.url) as conn:
        docs_table(conn, 600, words=60)
        first = stack.worker("first", env={"ROWEMBED_BATCH_ROWS": "200"})
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        # Mid-batch: rows claimed by the worker's live session, the backlog not done.
        wait_until(
            lambda: conn.execute(
                "SELECT in_flight > 0 AND embedded < 600 FROM rowembed.status() WHERE id = %s",
                [v.id],
            ).fetchone()[0],
            timeout=60,
        )
        first.kill()
        killed_at = time.monotonic()
        stack.worker("second")
        wait_until(lambda: drained(conn, v), timeout=180)
        # The lease is 300 s: finishing well before it means the dead claims were
        # taken over as soon as their session died.
        assert time.monotonic() - killed_at < 150
        assert embedded_count(conn, v) == 600
        assert_current(conn, v, encoder)


def test_redis_restart_drops_hints_but_no_work(stack: Stack, encoder: Encoder) -> None:
    with connect(stack.pg.url) as conn:
        docs_table(conn, 0)
        stack.worker("worker")
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        stack.redis.stop()  # every queued message is gone, and the broker is down
        conn.execute(
            "INSERT INTO docs SELECT i, 'written while redis was down ' || i, 'x'"
            " FROM generate_series(1, 100) i"
        )
        time.sleep(1.5)
        stack.redis.start()  # empty: the hints for those rows were never delivered
        wait_until(lambda: embedded_count(conn, v) == 100, timeout=120)
        assert drained(conn, v)
        assert_current(conn, v, encoder)


def test_changes_made_while_no_dispatcher_runs_are_embedded_when_one_starts(
    stack: Stack, encoder: Encoder
) -> None:
    """Nothing in the writer's transaction signals a change: a dispatcher that
    starts later finds what was queued meanwhile."""
    with connect(stack.pg.url) as conn:
        docs_table(conn, 0)
        stack.worker("worker", args=("--concurrency", "1", "--no-dispatcher"))
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        conn.execute(
            "INSERT INTO docs SELECT i, 'written while no dispatcher ran ' || i, 'x'"
            " FROM generate_series(1, 50) i"
        )
        time.sleep(2)
        assert embedded_count(conn, v) == 0  # no hint: the worker waits
        with (stack.tmp / "dispatcher.log").open("ab") as log:
            dispatcher = subprocess.Popen(
                [sys.executable, "-m", "rowembed", "dispatcher"],
                env={
                    **os.environ,
                    "ROWEMBED_DATABASE_URL": stack.pg.url,
                    "ROWEMBED_REDIS_URL": stack.redis.url,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: embedded_count(conn, v) == 50, timeout=120)
            conn.execute("UPDATE docs SET body = 'changed while it runs' WHERE id = 7")
            wait_until(lambda: drained(conn, v), timeout=60)
        finally:
            dispatcher.terminate()
            dispatcher.wait(10)
        assert_current(conn, v, encoder)


def test_postgres_restart_while_workers_run(stack: Stack, encoder: Encoder) -> None:
    with connect(stack.pg.url) as conn:
        docs_table(conn, 500, words=40)
        stack.worker("worker")
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        wait_until(lambda: embedded_count(conn, v) > 0, timeout=60)
    stack.pg.restart()
    with connect(stack.pg.url) as conn:
        conn.execute("INSERT INTO docs VALUES (1000, 'written after the restart', 'x')")
        wait_until(lambda: drained(conn, v) and embedded_count(conn, v) == 501, timeout=180)
        assert_current(conn, v, encoder)


def test_duplicate_hints_and_requeues_cost_no_extra_model_calls(
    stack: Stack, encoder: Encoder
) -> None:
    from rowembed.settings import Settings
    from rowembed.workers.celery_app import make_app
    from rowembed.workers.queues import EMBED_QUEUE

    with connect(stack.pg.url) as conn:
        docs_table(conn, 80)
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        for _ in range(5):  # the same rows queued again and again (backfills, replays)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, seq, priority)"
                    " SELECT id, nextval('rowembed.change_seq'), 1 FROM docs"
                    " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq"
                ).format(v.queue)
            )
        app = make_app(Settings(redis_url=stack.redis.url))
        for _ in range(40):  # the same hint delivered many times
            app.send_task("rowembed.embed", args=[v.id], queue=EMBED_QUEUE)
        stack.worker("worker")
        wait_until(lambda: drained(conn, v) and embedded_count(conn, v) == 80, timeout=120)
        time.sleep(3)  # let every duplicate hint be consumed
        calls = conn.execute(
            "SELECT sum(embedded), sum(written) FROM rowembed.batch_stats WHERE vectorizer_id = %s",
            [v.id],
        ).fetchone()
        assert calls == (80, 80)  # one model embedding and one write per row
        assert_current(conn, v, encoder)


@pytest.mark.parametrize(
    "chunking",
    [{}, {"chunking": "tokens", "chunk_tokens": 10, "chunk_overlap": 2}],
    ids=["rows", "chunks"],
)
def test_random_history_with_concurrent_writers_and_three_workers(
    stack: Stack, encoder: Encoder, chunking: dict[str, Any]
) -> None:
    keys, writers, ops_per_writer = 40, 4, 60
    with connect(stack.pg.url) as conn:
        docs_table(conn, 0)
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL, **chunking)
        # Record every embedding ever stored, in the order the stores committed.
        conn.execute("CREATE TABLE audit (n bigserial, id int, text_hash bytea)")
        conn.execute("""CREATE FUNCTION audit_store() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO audit (id, text_hash) VALUES (NEW.id, NEW.text_hash); RETURN NULL;
            END $$""")
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {}"
                " FOR EACH ROW EXECUTE FUNCTION audit_store()"
            ).format(v.destination)
        )
        for name in ("w1", "w2", "w3"):
            stack.worker(name, env={"ROWEMBED_BATCH_ROWS": "8"})

        versions: dict[bytes, tuple[int, int]] = {}  # md5(text) -> (key, version)
        counters = [0] * keys
        lock = threading.Lock()

        def write(seed: int) -> None:
            rng = random.Random(seed)
            with connect(stack.pg.url) as wconn:
                for _ in range(ops_per_writer):
                    key = rng.randrange(keys)
                    with lock:  # versions of one key are numbered in commit order
                        counters[key] += 1
                        version = counters[key]
                        text = f"key {key} version {version} " + " ".join(rng.choices(WORDS, k=6))
                        import hashlib

                        versions[hashlib.md5(text.encode()).digest()] = (key, version)
                        if rng.random() < 0.15:
                            wconn.execute("DELETE FROM docs WHERE id = %s", [key])
                        else:
                            wconn.execute(
                                "INSERT INTO docs VALUES (%s, %s, 'x') ON CONFLICT (id)"
                                " DO UPDATE SET body = excluded.body",
                                [key, text],
                            )
                    time.sleep(rng.random() * 0.05)

        threads = [threading.Thread(target=write, args=(seed,)) for seed in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: drained(conn, v), timeout=180)
        time.sleep(1)
        assert drained(conn, v)
        assert_current(conn, v, encoder)
        # Invariant 2: per key, the versions stored only ever go up.
        last: dict[int, int] = {}
        for key, text_hash in conn.execute("SELECT id, text_hash FROM audit ORDER BY n"):
            stored_key, version = versions[bytes(text_hash)]
            assert stored_key == key
            assert version >= last.get(key, 0), f"key {key}: version {version} after {last[key]}"
            last[key] = version


def test_poison_rows_are_parked_with_their_error_and_retried(
    stack: Stack, encoder: Encoder, tmp_path: Path
) -> None:
    flag = tmp_path / "poison-on"
    flag.touch()
    with connect(stack.pg.url) as conn:
        docs_table(conn, 40)
        conn.execute("UPDATE docs SET body = body || ' POISON' WHERE id IN (3, 17, 31)")
        stack.worker(
            "poisoned",
            module="tests.workers.poison_worker",
            env={"ROWEMBED_TEST_POISON_FLAG": str(flag)},
        )
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL, max_attempts=2)

        def parked() -> list[Any]:
            return conn.execute(
                "SELECT key, attempts, last_error FROM rowembed.vectorizer_errors"
                " WHERE parked ORDER BY key"
            ).fetchall()

        wait_until(lambda: len(parked()) == 3 and embedded_count(conn, v) == 37, timeout=120)
        assert parked() == [
            ({"id": k}, 2, "RuntimeError: injected fault: the model cannot embed this text")
            for k in (3, 17, 31)
        ]
        assert conn.execute(
            "SELECT queued, failed FROM rowembed.status() WHERE id = %s", [v.id]
        ).fetchone() == (0, 3)

        flag.unlink()  # the fault is fixed
        assert conn.execute("SELECT rowembed.retry_failed('docs')").fetchone() == (3,)
        wait_until(lambda: embedded_count(conn, v) == 40, timeout=60)
        assert parked() == []
        assert_current(conn, v, encoder)


def test_a_least_privilege_worker_role_is_enough(stack: Stack, encoder: Encoder) -> None:
    with connect(stack.pg.url) as conn:
        docs_table(conn, 30)
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        conn.execute("CREATE ROLE rowembed_worker LOGIN")
        conn.execute("SELECT rowembed.grant_worker('rowembed_worker')")
        url = stack.pg.url.replace("postgres@", "rowembed_worker@")
        stack.worker("restricted", url=url)
        conn.execute("INSERT INTO docs VALUES (100, 'inserted later', 'x')")
        conn.execute("UPDATE docs SET body = 'changed' WHERE id = 5")
        conn.execute("DELETE FROM docs WHERE id = 6")
        wait_until(lambda: drained(conn, v) and embedded_count(conn, v) == 30, timeout=120)
        assert_current(conn, v, encoder)
    with psycopg.connect(url, autocommit=True) as worker_conn:
        for statement in (
            "SELECT secret FROM docs",
            "INSERT INTO docs VALUES (7, 'x', 'x')",
            "UPDATE docs SET body = 'x'",
            "DELETE FROM docs",
            "INSERT INTO rowembed.vectorizer (name) VALUES ('x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker_conn.execute(statement)


def test_several_workers_share_one_queue_without_duplicated_work(
    stack: Stack, encoder: Encoder
) -> None:
    with connect(stack.pg.url) as conn:
        docs_table(conn, 400, words=20)
        for name in ("a", "b", "c"):
            stack.worker(name, env={"ROWEMBED_BATCH_ROWS": "16"})
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        wait_until(lambda: drained(conn, v) and embedded_count(conn, v) == 400, timeout=180)
        per_worker = conn.execute(
            "SELECT worker, sum(embedded) FROM rowembed.batch_stats WHERE vectorizer_id = %s"
            " GROUP BY worker",
            [v.id],
        ).fetchall()
        assert sum(n for _, n in per_worker) == 400  # each row embedded once, by one worker
        assert len(per_worker) >= 2  # and the work was shared
        assert_current(conn, v, encoder)


def test_two_workers_and_two_dispatchers_one_of_each_killed_mid_backfill(
    stack: Stack, encoder: Encoder
) -> None:
    """Scale out: two `rowembed worker`s, each with its dispatcher, on one
    database; one machine's worth (worker, dispatcher, query worker) is killed
    while the backfill is still queueing and embedding. Nothing is lost: the other
    dispatcher goes on queueing, the other worker takes the dead one's claims;
    rows are embedded again only if the dead one held them (at least once, never
    more); and the survivors keep live changes current."""
    rows = 11_500  # past the 10,000 that create_vectorizer queues itself
    env = {"ROWEMBED_BATCH_ROWS": "256", "ROWEMBED_BACKFILL_CHUNK": "500"}
    with connect(stack.pg.url) as conn:
        docs_table(conn, rows, words=4)
        doomed = stack.worker("a", env=env)
        stack.worker("b", env=env)
        v = create_vectorizer(conn, "docs", ["body"], model=MODEL)
        scanned = "SELECT scanned FROM rowembed.backfill WHERE vectorizer_id = %s"
        wait_until(
            lambda: (
                embedded_count(conn, v) > 0 and conn.execute(scanned, [v.id]).fetchone()[0] < rows
            ),  # type: ignore[index]
            timeout=120,
        )
        (in_flight,) = conn.execute(
            "SELECT in_flight FROM rowembed.status() WHERE id = %s", [v.id]
        ).fetchone()  # type: ignore[misc]
        doomed.kill()
        wait_until(lambda: drained(conn, v) and embedded_count(conn, v) == rows, timeout=600)
        assert conn.execute(
            "SELECT state, scanned FROM rowembed.backfill WHERE vectorizer_id = %s", [v.id]
        ).fetchone() == ("done", rows)
        (done,) = conn.execute(
            "SELECT sum(embedded) FROM rowembed.batch_stats WHERE vectorizer_id = %s", [v.id]
        ).fetchone()  # type: ignore[misc]
        assert rows <= done <= rows + in_flight  # only the dead one's claims twice
        conn.execute("UPDATE docs SET body = body || ' changed' WHERE id % 100 = 0")
        conn.execute("DELETE FROM docs WHERE id % 500 = 1")
        wait_until(lambda: drained(conn, v), timeout=120)
        wait_until(lambda: embedded_count(conn, v) == rows - rows // 500, timeout=60)
        assert_current(conn, v, encoder)
