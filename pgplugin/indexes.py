"""Building a vectorizer's deferred vector index.

A backfill of many rows writes faster without the HNSW index (the design brief:
about 11,000 rows/s against 375), so `rowembed.start_backfill` drops it and the
index is built once the backlog has drained: CREATE INDEX CONCURRENTLY (writes
go on meanwhile), with parallel maintenance workers and enough memory to keep
the graph in memory. SQL decides what to build (`rowembed.indexes_to_build()`,
`rowembed.index_sql(name)`); this module runs it, since CONCURRENTLY cannot run
inside a function or a transaction block.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# advisory lock (BUILDING_KEY, vectorizer id) held while a session builds; see rowembed._building().
BUILDING_KEY = 7499640


def build_index(
    conn: psycopg.Connection[Any], name: str, *, memory: str, parallel_workers: int
) -> float | None:
    """Build `name`'s deferred index on `conn` (autocommit). Returns the seconds
    it took, or None when there was nothing to build or another session builds it."""
    row = conn.execute(
        "SELECT id, rowembed.index_sql(name) FROM rowembed.vectorizer WHERE name = %s", [name]
    ).fetchone()
    if row is None or row[1] is None:
        return None
    vectorizer_id, statement = row
    locked = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", [BUILDING_KEY, vectorizer_id]
    ).fetchone()
    if not (locked and locked[0]):
        return None
    try:
        return _build(conn, name, vectorizer_id, statement, memory, parallel_workers)
    except Exception as exc:
        if not conn.broken:
            conn.execute("SELECT rowembed.index_failed(%s, %s)", [name, str(exc).strip()])
        raise
    finally:
        if not conn.broken:  # else the settings and the lock went with the session
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", [BUILDING_KEY, vectorizer_id])


def _build(
    conn: psycopg.Connection[Any],
    name: str,
    vectorizer_id: int,
    statement: str,
    memory: str,
    parallel_workers: int,
) -> float:
    _drop_invalid(conn, vectorizer_id)
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory])
    conn.execute(
        "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
        [str(parallel_workers)],
    )
    log.info("building the index of %s: %s", name, statement)
    started = time.monotonic()
    try:
        conn.execute(statement)
    except psycopg.Error:
        # A failed concurrent build leaves an invalid index that every write
        # still maintains: exactly the cost deferring avoids. Drop it now.
        if not conn.broken:
            _drop_invalid(conn, vectorizer_id)
        raise
    seconds = time.monotonic() - started
    done = conn.execute("SELECT rowembed.index_built(%s)", [name]).fetchone()
    if not (done and done[0]):
        raise RuntimeError(f"the index of {name} was not valid after CREATE INDEX")
    log.info("built the index of %s in %.1f s", name, seconds)
    return seconds


def _drop_invalid(conn: psycopg.Connection[Any], vectorizer_id: int) -> None:
    """A concurrent build that was interrupted leaves an invalid index behind;
    IF NOT EXISTS would keep it, so drop it first."""
    rows = conn.execute(
        """SELECT c.relnamespace::regnamespace::text, c.relname::text
             FROM rowembed.vectorizer v
             JOIN pg_index i ON i.indrelid = v.destination
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
            WHERE v.id = %s AND a.amname = 'hnsw' AND NOT i.indisvalid""",
        [vectorizer_id],
    ).fetchall()
    for schema, index in rows:
        log.warning("dropping %s.%s, left invalid by an interrupted build", schema, index)
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index))
        )


def defer_index(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("SELECT rowembed.defer_index(%s)", [name])
