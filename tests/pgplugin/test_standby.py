"""Searches on a hot standby: a real streaming replica of the session's
PostgreSQL. By vector it searches alone; by text it reads the replicated query
cache, and asks the primary's workers (over the connection set for standbys)
for a text not cached, with the tenants' privileges checked on the standby."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer

from ..conftest import MODEL, WorkerProcess, wait_until

Conn = psycopg.Connection[Any]
TEXTS = {1: "cats sleep most of the day", 2: "stock markets fell sharply", 3: "a recipe for soup"}


@pytest.fixture(scope="module")
def standby(postgres: EmbeddedPostgres, database_url: str) -> Iterator[EmbeddedPostgres]:
    replica = postgres.standby()
    yield replica
    replica.remove()


def replayed(primary: Conn, standby: Conn) -> None:
    """Waits until the standby has replayed everything the primary wrote so far."""
    (lsn,) = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
    wait_until(
        lambda: (
            standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()
            == (True,)
        ),
        timeout=60,
    )


@pytest.fixture
def conn(served: tuple[str, WorkerProcess]) -> Iterator[Conn]:
    """This module's database, which a worker of its own serves."""
    with connect(served[0]) as c:
        yield c


def on_standby(standby: EmbeddedPostgres, conn: Conn) -> str:
    """The URL of `conn`'s database on the standby."""
    return standby.url.replace("/postgres?", f"/{conn.info.dbname}?")


@pytest.fixture
def docs(
    conn: Conn, table: str, postgres: EmbeddedPostgres, cross_encoder_dir: Path
) -> Iterator[Vectorizer]:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    for key, body in TEXTS.items():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), [key, body])
    v = create_vectorizer(conn, table, ["body"], model=MODEL, rerank_model=str(cross_encoder_dir))
    conn.execute(sql.SQL("SELECT rowembed.enable_text_search(%s)"), [v.name])
    count = sql.SQL("SELECT count(*) FROM {}").format(v.destination)
    wait_until(lambda: conn.execute(count).fetchone() == (3,), timeout=120)
    # Standbys reach the primary's workers through its socket, as rowembed_loopback.
    conn.execute(
        "SELECT rowembed.set_query_connection(%s, standby => true)",
        [f"host={postgres.base_dir} dbname={conn.info.dbname} user=rowembed_loopback"],
    )
    yield v
    conn.execute("SELECT rowembed.set_query_connection(NULL, standby => true)")


def test_every_search_function_works_on_a_standby(
    conn: Conn, standby: EmbeddedPostgres, docs: Vectorizer
) -> None:
    t = sql.Identifier(docs.source_table)
    with connect(on_standby(standby, conn)) as replica:
        replayed(conn, replica)
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        vector = replica.execute(
            sql.SQL("SELECT embedding FROM {} WHERE id = 1").format(docs.destination)
        ).fetchone()[0]  # type: ignore[index]
        by_vector = replica.execute(
            sql.SQL("SELECT (item).id FROM rowembed.search(NULL::{}, %s, 1)").format(t), [vector]
        ).fetchall()
        assert by_vector == [(1,)]
        similar = replica.execute(
            sql.SQL(
                "SELECT (s.similar_item).id FROM {} AS d, rowembed.similar(d, 1, -1) AS s"
                " WHERE d.id = 2"
            ).format(t)
        ).fetchall()
        assert len(similar) == 1

        query = f"a kitten napping {time.monotonic_ns()}"  # never asked before: uncached
        search_text = sql.SQL(
            "SELECT (item).id FROM rowembed.search_text(NULL::{}, %s, 1, timeout_seconds => 30)"
        ).format(t)
        assert replica.execute(search_text, [query]).fetchall() == [(1,)]
        replayed(conn, replica)  # the primary's worker cached it; the standby reads it
        cached = replica.execute(
            "SELECT count(*) FROM rowembed.query_cache WHERE vectorizer_id = %s", [docs.id]
        ).fetchone()
        assert cached is not None and cached[0] >= 1
        assert replica.execute(search_text, [query]).fetchall() == [(1,)]

        hybrid = replica.execute(
            sql.SQL(
                "SELECT (item).id FROM rowembed.hybrid_search(NULL::{}, 'stock markets', 1)"
            ).format(t)
        ).fetchall()
        assert hybrid == [(2,)]
        embedded = replica.execute(
            "SELECT rowembed.embed_query(%s, 'soup recipes', timeout_seconds => 30) IS NOT NULL",
            [docs.name],
        ).fetchone()
        assert embedded == (True,)
        scores = replica.execute(
            "SELECT rowembed.rerank(%s, 'soup', ARRAY['a recipe for soup', 'stock markets'],"
            " timeout_seconds => 30)",
            [docs.name],
        ).fetchone()[0]  # type: ignore[index]
        assert len(scores) == 2


def test_a_standby_refuses_whom_the_primary_would(
    conn: Conn, standby: EmbeddedPostgres, docs: Vectorizer
) -> None:
    conn.execute("DROP ROLE IF EXISTS standby_stranger")
    conn.execute("CREATE ROLE standby_stranger LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA rowembed TO standby_stranger")
    with connect(on_standby(standby, conn)) as replica:
        replayed(conn, replica)
    url = on_standby(standby, conn).replace("postgres@", "standby_stranger@")
    with (
        psycopg.connect(url, autocommit=True) as stranger,
        pytest.raises(psycopg.Error, match=r"may not search|permission denied"),
    ):
        stranger.execute(
            sql.SQL("SELECT * FROM rowembed.search_text(NULL::{}, 'cats', 1)").format(
                sql.Identifier(docs.source_table)
            )
        )


def test_a_standby_without_a_connection_to_its_primary_says_how_to_set_one(
    conn: Conn, standby: EmbeddedPostgres, docs: Vectorizer
) -> None:
    conn.execute("SELECT rowembed.set_query_connection(NULL, standby => true)")
    with connect(on_standby(standby, conn)) as replica:
        replayed(conn, replica)
        with pytest.raises(psycopg.Error) as raised:
            replica.execute(
                sql.SQL("SELECT * FROM rowembed.search_text(NULL::{}, %s, 1)").format(
                    sql.Identifier(docs.source_table)
                ),
                [f"never asked {time.monotonic_ns()}"],
            )
    assert "hot standby" in str(raised.value)
    assert "standby => true" in (raised.value.diag.message_hint or "")


def test_status_on_a_standby_counts_the_primarys_claims_in_flight(
    own_db: Conn, standby: EmbeddedPostgres
) -> None:
    """The standby sees none of the primary's workers: claims whose lease holds
    are in flight there, as they are on the primary."""
    own_db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    own_db.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 3) i")
    v = create_vectorizer(own_db, "notes", ["body"], model=MODEL)
    Queue(v).claim(own_db, 2, 300)  # no worker serves this database: these are ours
    counts = "SELECT queued, in_flight FROM rowembed.status() WHERE name = %s"
    assert own_db.execute(counts, [v.name]).fetchone() == (1, 2)
    url = standby.url.replace("/postgres?", f"/{own_db.info.dbname}?")
    with connect(url) as replica:
        replayed(own_db, replica)
        assert replica.execute(counts, [v.name]).fetchone() == (1, 2)
