"""Building a vectorizer's deferred vector index.

A backfill of many rows writes faster without the HNSW index (bench/RESULTS.md:
thousands of rows/s against a few hundred), so `rowembed.start_backfill` drops it and the
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

from ._call import call, scalar

log = logging.getLogger(__name__)


def build_index(
    conn: psycopg.Connection[Any], name: str, *, memory: str, parallel_workers: int
) -> float | None:
    """Build `name`'s deferred index on `conn` (autocommit). Returns the seconds
    it took, or None when there was nothing to build or another session builds it."""
    row = conn.execute("SELECT id FROM rowembed.vectorizer WHERE name = %s", [name]).fetchone()
    statement = scalar(conn, "index_sql", name=name)
    if row is None or statement is None:
        return None
    (vectorizer_id,) = row
    if not scalar(conn, "lock_index_build", vectorizer_id=vectorizer_id):
        return None
    try:
        return _build(conn, name, vectorizer_id, statement, memory, parallel_workers)
    except Exception as exc:
        if not conn.broken:
            call(conn, "index_failed", name=name, error=str(exc).strip())
        raise
    finally:
        if not conn.broken:  # else the settings and the lock went with the session
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            call(conn, "unlock_index_build", vectorizer_id=vectorizer_id)


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
    if not scalar(conn, "index_built", name=name):
        raise RuntimeError(f"the index of {name} was not valid after CREATE INDEX")
    log.info("built the index of %s in %.1f s", name, seconds)
    return seconds


def _drop_invalid(conn: psycopg.Connection[Any], vectorizer_id: int) -> None:
    """A concurrent build that was interrupted leaves an invalid index behind;
    IF NOT EXISTS would keep it, so drop it first."""
    rows = conn.execute(
        """SELECT n.nspname::text, c.relname::text
             FROM rowembed.vectorizer v
             JOIN pg_index i ON i.indrelid = v.destination
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE v.id = %s AND a.amname = 'hnsw' AND NOT i.indisvalid""",
        [vectorizer_id],
    ).fetchall()
    for schema, index in rows:
        log.warning("dropping %s.%s, left invalid by an interrupted build", schema, index)
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index))
        )


def defer_index(conn: psycopg.Connection[Any], name: str) -> None:
    """Drop the index until the backlog drains (the dispatcher builds it then)."""
    call(conn, "defer_index", name=name)


def indexes_to_build(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of the deferred indexes this role may build now."""
    return [name for (name,) in call(conn, "indexes_to_build").fetchall()]
