"""Changing a vectorizer's model and chunking without downtime: the replacement
is built beside it by the real worker, searches answer throughout, the switch
leaves every row embedded by the new model; cancel leaves the old one intact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.dev.bench import cls_pooling_model
from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import alter_vectorizer, cancel_alter, connect, create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import complete_alters, get_vectorizer, list_vectorizers
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL, WorkerProcess, database_with_worker, wait_until

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another encoder of the same size: the bundled model pooling its [CLS] token."""
    return cls_pooling_model(tmp_path_factory.mktemp("cls-model"))


def fill(conn: Conn, table: str, rows: int) -> sql.Identifier:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, 'row ' || i || ' is about topic ' || (i %% 17)"
            " FROM generate_series(1, %s) AS i"
        ).format(t),
        [rows],
    )
    return t


def count(conn: Conn, query: sql.Composable, params: list[Any] | None = None) -> int:
    row = conn.execute(query, params or []).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def stack(
    postgres: EmbeddedPostgres, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WorkerProcess]]:
    log = tmp_path_factory.mktemp("model-change-worker") / "worker.log"
    with database_with_worker(postgres, redis_url, log) as stack:
        yield stack


@pytest.fixture
def db(stack: tuple[str, WorkerProcess]) -> Iterator[Conn]:
    with connect(stack[0]) as c:
        yield c


def test_a_model_change_keeps_searches_answering_and_misses_no_row(
    db: Conn, stack: tuple[str, WorkerProcess], table: str, cls_model: Path, encoder: Encoder
) -> None:
    conn, database_url = db, stack[0]
    rows = 600
    t = fill(conn, table, rows)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    wait_until(
        lambda: count(conn, sql.SQL("SELECT count(*) FROM {}").format(v.destination)) == rows,
        timeout=120,
    )
    query = encoder.encode(["topic 3"]).vectors[0]

    answers: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def poll() -> None:
        with connect(database_url) as searcher:
            while not done.is_set():
                try:
                    answers.append(
                        count(
                            searcher,
                            sql.SQL(
                                "SELECT count(*) FROM rowembed.search(NULL::{}, %s, 10, -1)"
                            ).format(t),
                            [query],
                        )
                    )
                except psycopg.Error as exc:
                    failures.append(str(exc))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        next_ = alter_vectorizer(
            conn,
            v.name,
            model=str(cls_model),
            dimensions=384,
            chunking="tokens",
            chunk_tokens=16,
            chunk_overlap=2,
        )
        assert next_.replaces == v.name and next_.name == f"{v.name}.next"
        # Live changes while the replacement is built reach both.
        conn.execute(
            sql.SQL("UPDATE {} SET body = %s WHERE id = 7").format(t),
            ["row seven now speaks of lighthouses and the sea at night"],
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 8").format(t))
        (during,) = status(conn, v.name)
        assert during.rebuild == f"being rebuilt as {next_.name}"
        wait_until(lambda: get_vectorizer(conn, v.name).model == str(cls_model), timeout=240)
    finally:
        done.set()
        poller.join()

    assert failures == [] and len(answers) > 10 and set(answers) == {10}
    after = get_vectorizer(conn, v.name)
    wait_until(lambda: Queue(after).is_drained(conn), timeout=60)  # changes queued at the switch
    # Same name, same table name, new model and chunks; the old tables are gone.
    assert (after.id, after.destination_table, after.chunking) == (
        next_.id,
        v.destination_table,
        "tokens",
    )
    assert [x.name for x in list_vectorizers(conn) if x.source_table == table] == [v.name]
    assert conn.execute("SELECT to_regclass(%s)", [f"{v.destination_table}_next"]).fetchone() == (
        None,
    )
    assert conn.execute("SELECT to_regclass(%s)", [f"public.rowembed_queue_{v.id}"]).fetchone() == (
        None,
    )
    # No row missing: every row but the deleted one, by the new model.
    keys = count(conn, sql.SQL("SELECT count(DISTINCT id) FROM {}").format(after.destination))
    assert keys == rows - 1
    cls_encoder = Encoder.load(str(cls_model), device="cpu")
    text = "row seven now speaks of lighthouses and the sea at night"
    stored = conn.execute(
        sql.SQL(
            "SELECT embedding, chunk_start, chunk_end FROM {} WHERE id = 7 ORDER BY chunk"
        ).format(after.destination)
    ).fetchall()
    expected = cls_encoder.encode([text[s:e] for _, s, e in stored]).vectors
    assert np.abs(np.stack([r[0].to_numpy() for r in stored]) - expected).max() < 1e-5


def test_a_rebuild_waits_until_complete_and_cancel_leaves_the_old_one_intact(
    own_db: Conn, table: str, cls_model: Path
) -> None:
    fill(own_db, table, 30)
    v = create_vectorizer(own_db, table, ["body"], model=MODEL)
    own_db.execute("CREATE ROLE model_change_reader")
    own_db.execute(sql.SQL("GRANT SELECT ON {} TO model_change_reader").format(v.destination))
    next_ = alter_vectorizer(own_db, v.name, model=str(cls_model), dimensions=384, keep_old=True)
    # Nothing embedded yet (no worker here): no switch, and status says why.
    assert complete_alters(own_db) == []
    (pending,) = status(own_db, next_.name)
    assert pending.rebuild == f"replaces {v.name}: 30 rows of its backfill wait to be embedded"
    assert (
        count(
            own_db,
            sql.SQL(
                "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee ="
                " 'model_change_reader' AND table_name = %s"
            ),
            [next_.destination_table],
        )
        == 1
    )
    with pytest.raises(psycopg.errors.RaiseException, match="already being rebuilt"):
        alter_vectorizer(own_db, v.name, chunking="tokens")
    with pytest.raises(psycopg.errors.RaiseException, match="itself a replacement"):
        alter_vectorizer(own_db, next_.name, chunking="tokens")

    assert cancel_alter(own_db, v.name) is True
    assert [x.name for x in list_vectorizers(own_db)] == [v.name]
    assert own_db.execute("SELECT to_regclass(%s)", [next_.destination_table]).fetchone() == (None,)
    assert get_vectorizer(own_db, v.name).model == MODEL
    assert cancel_alter(own_db, v.name) is False
