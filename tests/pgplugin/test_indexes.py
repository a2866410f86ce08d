"""Storage and index choices, and the deferred index of a bulk load."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.indexes import build_index
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.dispatcher import Dispatcher
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL, wait_until

Conn = psycopg.Connection[Any]


def make_table(conn: Conn, table: str, rows: int) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, 'row number ' || i || ' of the table'"
            " FROM generate_series(1, %s) i"
        ).format(sql.Identifier(table)),
        [rows],
    )


def drain(conn: Conn, v: Vectorizer, encoder: Any) -> None:
    while run_batch(conn, Queue(v), encoder, limit=64, lease_seconds=60).claimed:
        pass


def vector_index(conn: Conn, v: Vectorizer) -> str | None:
    row = conn.execute(
        "SELECT rowembed._vector_index(z)::text FROM rowembed.vectorizer z WHERE id = %s", [v.id]
    ).fetchone()
    return row[0] if row else None


def index_status(conn: Conn, v: Vectorizer) -> str:
    row = conn.execute("SELECT index FROM rowembed.status() WHERE id = %s", [v.id]).fetchone()
    assert row is not None
    return str(row[0])


def to_build(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT rowembed.indexes_to_build()").fetchall()]


def test_a_small_backfill_keeps_the_index_live(conn: Conn, table: str) -> None:
    make_table(conn, table, 30)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)  # defer above 100,000 rows
    assert v.index_state == "built" and vector_index(conn, v) is not None
    assert index_status(conn, v) == "hnsw: built"


def test_a_large_backfill_defers_the_index_until_the_backlog_drains(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    make_table(conn, table, 120)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, defer_index_above=50)
    assert v.index_state == "deferred" and vector_index(conn, v) is None
    assert index_status(conn, v).startswith("hnsw: deferred until the backlog drains")
    assert table not in to_build(conn)  # the backlog is still queued

    drain(conn, v, encoder)
    assert to_build(conn) == [table]

    stop = threading.Event()
    dispatcher = Dispatcher(database_url, lambda *hint: None, sweep_seconds=0.2)
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    try:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT index_state FROM rowembed.vectorizer WHERE id = %s", [v.id]
                ).fetchone()
                == ("built",)
            ),
            timeout=30,
        )
    finally:
        stop.set()
        thread.join(10)
    (valid,) = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
        [vector_index(conn, v)],
    ).fetchone()
    assert valid and index_status(conn, v) == "hnsw: built"
    assert to_build(conn) == []

    # A later backfill of the same (now embedded) table leaves the index alone.
    conn.execute("SELECT rowembed.start_backfill(%s)", [table])
    assert vector_index(conn, v) is not None


def test_one_session_builds_a_deferred_index(own_db: Conn, table: str) -> None:
    """In a database of its own: the session's worker (its dispatcher builds
    deferred indexes) must not build this one meanwhile."""
    conn = own_db
    database_url = own_db.info.dsn
    make_table(conn, table, 10)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    conn.execute("SELECT rowembed.defer_index(%s)", [table])
    assert vector_index(conn, v) is None
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT rowembed.lock_index_build(%s)", [v.id])  # another builder
        assert table not in to_build(conn)
        assert index_status(conn, v) == "hnsw: building"
        assert build_index(conn, table, memory="64MB", parallel_workers=0) is None
        assert vector_index(conn, v) is None
        with pytest.raises(psycopg.errors.RaiseException, match="is being built now"):
            conn.execute("SELECT rowembed.defer_index(%s)", [table])
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        build_index(conn, table, memory="a lot", parallel_workers=2)
    assert index_status(conn, v).startswith("hnsw: deferred; the last build failed: invalid")
    seconds = build_index(conn, table, memory="64MB", parallel_workers=2)
    assert seconds is not None and vector_index(conn, v) is not None
    assert index_status(conn, v) == "hnsw: built"
    assert build_index(conn, table, memory="64MB", parallel_workers=2) is None  # nothing to do


def test_only_the_owner_defers_or_builds(conn: Conn, table: str) -> None:
    make_table(conn, table, 10)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    conn.execute("SELECT rowembed.defer_index(%s)", [table])
    conn.execute("DROP ROLE IF EXISTS rowembed_not_owner")
    conn.execute("CREATE ROLE rowembed_not_owner")
    conn.execute("GRANT USAGE ON SCHEMA rowembed TO rowembed_not_owner")
    conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA rowembed TO rowembed_not_owner")
    conn.execute(sql.SQL("GRANT SELECT ON {} TO rowembed_not_owner").format(v.queue))
    with conn.transaction():
        conn.execute("SET LOCAL ROLE rowembed_not_owner")
        assert table not in to_build(conn)
    conn.execute("SELECT rowembed.index_built(%s)", [table])  # no index yet: stays deferred
    assert conn.execute(
        "SELECT index_state FROM rowembed.vectorizer WHERE id = %s", [v.id]
    ).fetchone() == ("deferred",)

    # Owning the destination is not enough: the vectorizer's owner records the build.
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO rowembed_not_owner").format(v.destination))
    with conn.transaction():
        conn.execute("SET LOCAL ROLE rowembed_not_owner")
        assert table not in to_build(conn)
    owner = sql.Identifier(conn.info.parameter_status("session_authorization") or "")
    conn.execute(sql.SQL("GRANT {} TO rowembed_not_owner").format(owner))
    with conn.transaction():
        conn.execute("SET LOCAL ROLE rowembed_not_owner")
        assert table in to_build(conn)
    conn.execute(sql.SQL("REVOKE {} FROM rowembed_not_owner").format(owner))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO CURRENT_USER").format(v.destination))
    conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA rowembed FROM rowembed_not_owner")
    conn.execute(sql.SQL("REVOKE ALL ON {} FROM rowembed_not_owner").format(v.queue))
    conn.execute("REVOKE ALL ON SCHEMA rowembed FROM rowembed_not_owner")


STORAGE = [
    ("vector", "hnsw", "vector_cosine_ops"),
    ("halfvec", "hnsw", "halfvec_cosine_ops"),
    ("vector", "hnsw_binary", "bit_hamming_ops"),
    ("halfvec", "hnsw_binary", "bit_hamming_ops"),
    ("vector", "none", None),
]


@pytest.mark.parametrize(("storage", "method", "opclass"), STORAGE)
def test_storage_and_index_choices_search_alike(
    conn: Conn, table: str, encoder: Encoder, storage: str, method: str, opclass: str | None
) -> None:
    make_table(conn, table, 200)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, storage=storage, index_method=method)
    drain(conn, v, encoder)
    (column_type,) = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attname = 'embedding'",
        [f"{table}_embeddings"],
    ).fetchone()
    assert column_type == f"{storage}(384)"
    index = vector_index(conn, v)
    if opclass is None:
        assert index is None
    else:
        (definition,) = conn.execute("SELECT pg_get_indexdef(%s::regclass)", [index]).fetchone()
        assert opclass in definition

    stored = {
        key: vec.to_numpy().astype(np.float64)
        for key, vec in conn.execute(
            sql.SQL("SELECT id, embedding FROM {}").format(v.destination)
        ).fetchall()
    }
    assert len(stored) == 200
    query = encoder.encode(["row number 17 of the table"]).vectors[0]
    keys = list(stored)
    sims = np.stack([stored[k] for k in keys]) @ query
    exact = [keys[i] for i in np.argsort(-sims)[:5]]
    with conn.transaction():
        # The plan of a large table, pinned: on 200 rows, load or fresh statistics
        # could tip the planner to a merge join on the keys instead.
        for setting in ("enable_seqscan", "enable_mergejoin", "enable_hashjoin", "enable_sort"):
            conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
        hits = conn.execute(
            sql.SQL(
                "SELECT (item).id, similarity FROM rowembed.search(NULL::{}, %s, 5, -1)"
            ).format(sql.Identifier(table)),
            [query],
        ).fetchall()
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT * FROM rowembed.explain_search(NULL::{}, %s, 5)").format(
                    sql.Identifier(table)
                ),
                [query],
            ).fetchall()
        )
    assert hits[0][0] == 17
    assert len({h[0] for h in hits} & set(exact)) >= 4
    for key, similarity in hits:
        assert abs(similarity - float(stored[key] @ query)) < 2e-3
    if index is not None:
        assert f"Index Scan using {index}" in plan, plan
        # Deferred, the index is not used and the search is exact.
        conn.execute("SELECT rowembed.defer_index(%s)", [table])
        hits = conn.execute(
            sql.SQL("SELECT (item).id FROM rowembed.search(NULL::{}, %s, 5, -1)").format(
                sql.Identifier(table)
            ),
            [query],
        ).fetchall()
        assert [h[0] for h in hits] == exact


def test_bad_choices_are_named(conn: Conn, table: str) -> None:
    make_table(conn, table, 1)
    with pytest.raises(psycopg.errors.RaiseException, match="storage must be vector or halfvec"):
        create_vectorizer(conn, table, ["body"], model=MODEL, storage="float8")
    with pytest.raises(psycopg.errors.RaiseException, match="index_method must be hnsw"):
        create_vectorizer(conn, table, ["body"], model=MODEL, index_method="ivf")


def test_an_invalid_index_in_a_schema_that_needs_quoting_is_dropped_before_a_build(
    conn: Conn, table: str
) -> None:
    schema = f"Mixed Schema {table}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
            sql.Identifier(schema, "docs")
        )
    )
    qualified = sql.Identifier(schema, "docs").as_string(conn)
    v = create_vectorizer(conn, qualified, ["body"], model=MODEL, backfill=False)
    index = vector_index(conn, v)
    assert index is not None
    conn.execute("SELECT rowembed.defer_index(%s)", [v.name])
    # What an interrupted CREATE INDEX CONCURRENTLY leaves behind: an invalid index.
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
            sql.Identifier("leftover"), v.destination
        )
    )
    conn.execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
        [sql.Identifier(schema, "leftover").as_string(conn)],
    )
    assert build_index(conn, v.name, memory="64MB", parallel_workers=0) is not None
    names = conn.execute(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c"
        " ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
        " WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
        [v.destination.as_string(conn)],
    ).fetchall()
    assert len(names) == 1 and names[0][1] is True and names[0][0] != "leftover"
