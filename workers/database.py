"""The worker's database I/O: claim queue entries, read their text, write vectors.

Correctness rests on the queue entry's `seq`: every change of a source row gives
its entry a new value from rowembed.change_seq. A worker claims entries (a
lease, committed at once), reads the rows' text in a later statement, and in
the write transaction completes only the entries whose `seq` is still the one
it claimed. A change that lands in between gives the entry a new `seq`, so the
older vector is never written and the entry stays queued for the new text.
Locks: the queue row before the embedding row, as the triggers do; the worker
skips queue rows another transaction holds, so it never waits on the
application's transactions.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import psycopg
from psycopg import sql

from rowembed.pgplugin.vectorizers import Vectorizer


class Action(str, Enum):
    WRITE = "write"  # store the vector
    DELETE = "delete"  # the row is gone or its text is empty: no embedding
    KEEP = "keep"  # the stored vector is already of this text


@dataclass(frozen=True)
class QueuedRow:
    seq: int
    present: bool
    text: str
    text_hash: bytes
    stored_hash: bytes | None


@dataclass(frozen=True)
class Outcome:
    seq: int
    action: Action
    text_hash: bytes | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class WriteResult:
    completed: int  # queue entries removed
    written: int
    deleted: int


def _keys(columns: Sequence[str], alias: str | None = None) -> sql.Composable:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)


def _equal(columns: Sequence[str], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, c), sql.Identifier(right, c))
        for c in columns
    )


class QueueStatements:
    """The statements for one vectorizer, composed once."""

    def __init__(self, v: Vectorizer) -> None:
        pk = v.pk_columns
        self.stage_name = f"rowembed_stage_{v.id}"
        self.stage = sql.Identifier(self.stage_name)
        # Claimable: not parked, and never claimed, or its lease (or back-off) is
        # over, or the worker session that claimed it is gone.
        self.claim = sql.SQL("""
            UPDATE {queue} AS q
               SET lease_until = now() + make_interval(secs => %(lease)s),
                   claimed_by = %(token)s,
                   attempts = q.attempts + 1
              FROM (SELECT seq FROM {queue}
                     WHERE failed_at IS NULL
                       AND (lease_until IS NULL OR lease_until < now()
                            OR (claimed_by IS NOT NULL
                                AND claimed_by <> ALL (ARRAY(SELECT rowembed.live_workers()))))
                     ORDER BY priority, seq
                     LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED) AS c
             WHERE q.seq = c.seq
            RETURNING q.seq
        """).format(queue=v.queue)
        text = sql.SQL("concat_ws({sep}, {columns})").format(
            sep=sql.Literal(v.separator),
            columns=sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier("s", c)) for c in v.text_columns
            ),
        )
        self.read = sql.SQL("""
            SELECT q.seq, s.{first_key} IS NOT NULL, t.text,
                   decode(md5(t.text), 'hex'), e.text_hash
              FROM {queue} AS q
              LEFT JOIN {source} AS s ON {source_match}
              LEFT JOIN {dest} AS e ON {dest_match}
             CROSS JOIN LATERAL (SELECT {text} AS text) AS t
             WHERE q.seq = ANY(%(seqs)s)
        """).format(
            first_key=sql.Identifier(pk[0]),
            queue=v.queue,
            source=v.source,
            dest=v.destination,
            text=text,
            source_match=_equal(pk, "s", "q"),
            dest_match=_equal(pk, "e", "q"),
        )
        # float4 vectors whatever the column's storage: the INSERT casts to halfvec.
        self.create_stage = sql.SQL("""
            CREATE TEMP TABLE IF NOT EXISTS {stage}
                (seq bigint, action text, text_hash bytea, embedding vector)
                ON COMMIT DELETE ROWS
        """).format(stage=self.stage)
        self.copy_stage = sql.SQL(
            "COPY {stage} (seq, action, text_hash, embedding) FROM STDIN (FORMAT BINARY)"
        ).format(stage=self.stage)
        emb = sql.Identifier(v.embedding_column)
        self.write = sql.SQL("""
            WITH locked AS (
                SELECT q.seq FROM {queue} AS q JOIN {stage} AS st ON st.seq = q.seq
                FOR UPDATE OF q SKIP LOCKED
            ), done AS (
                DELETE FROM {queue} AS q USING locked WHERE q.seq = locked.seq
                RETURNING q.seq, {q_keys}
            ), removed AS (
                DELETE FROM {dest} AS e USING done JOIN {stage} AS st ON st.seq = done.seq
                 WHERE st.action = 'delete' AND {done_match}
                RETURNING 1
            ), written AS (
                INSERT INTO {dest} ({keys}, {emb}, text_hash, embedded_at)
                SELECT {done_keys}, st.embedding, st.text_hash, now()
                  FROM done JOIN {stage} AS st ON st.seq = done.seq
                 WHERE st.action = 'write'
                ON CONFLICT ({keys}) DO UPDATE
                   SET {emb} = excluded.{emb}, text_hash = excluded.text_hash,
                       embedded_at = excluded.embedded_at
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM written),
                   (SELECT count(*) FROM removed)
        """).format(
            queue=v.queue,
            stage=self.stage,
            dest=v.destination,
            emb=emb,
            keys=_keys(pk),
            q_keys=_keys(pk, "q"),
            done_keys=_keys(pk, "done"),
            done_match=_equal(pk, "e", "done"),
        )
        self.release = sql.SQL("""
            UPDATE {queue}
               SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0)
             WHERE seq = ANY(%(seqs)s) AND claimed_by = %(token)s
        """).format(queue=v.queue)
        # Failed rows: back off exponentially, park after max_attempts. Only the
        # version that failed: a row changed since then keeps its fresh entry.
        self.fail = sql.SQL("""
            UPDATE {queue} AS q
               SET last_error = f.error,
                   claimed_by = NULL,
                   lease_until = now() + make_interval(secs => least(600, 2 ^ q.attempts)),
                   failed_at = CASE WHEN q.attempts >= %(max_attempts)s THEN now() END
              FROM unnest(%(seqs)s::bigint[], %(errors)s::text[]) AS f(seq, error)
             WHERE q.seq = f.seq
        """).format(queue=v.queue)
        self.log_batch = sql.SQL("""
            INSERT INTO rowembed.batch_stats (vectorizer_id, worker, claimed, embedded, written,
                unchanged, deleted, superseded, failed, truncated, tokens, padded_tokens, seconds)
            VALUES ({id}, %(worker)s, %(claimed)s, %(embedded)s, %(written)s, %(unchanged)s,
                %(deleted)s, %(superseded)s, %(failed)s, %(truncated)s, %(tokens)s,
                %(padded_tokens)s, %(seconds)s)
        """).format(id=sql.Literal(v.id))


# advisory lock (LIVENESS_KEY, token) held by each worker session; see rowembed.live_workers().
LIVENESS_KEY = 7499639
_tokens: WeakKeyDictionary[psycopg.Connection[Any], int] = WeakKeyDictionary()


def worker_token(conn: psycopg.Connection[Any]) -> int:
    """This session's token, taken on first use and held until it disconnects."""
    if conn not in _tokens:
        while True:
            token = secrets.randbelow(2**31 - 1) + 1
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", [LIVENESS_KEY, token]
            ).fetchone()
            if row and row[0]:
                _tokens[conn] = token
                break
    return _tokens[conn]


def claim(
    conn: psycopg.Connection[Any], st: QueueStatements, limit: int, lease: float
) -> list[int]:
    """Lease up to `limit` entries, live changes first. Commits at once."""
    token = worker_token(conn)
    with conn.transaction():
        rows = conn.execute(st.claim, {"limit": limit, "lease": lease, "token": token}).fetchall()
    return [r[0] for r in rows]


def release(conn: psycopg.Connection[Any], st: QueueStatements, seqs: list[int]) -> None:
    """Give back claims this session has not worked on."""
    if seqs:
        with conn.transaction():
            conn.execute(st.release, {"seqs": seqs, "token": worker_token(conn)})


def read(conn: psycopg.Connection[Any], st: QueueStatements, seqs: list[int]) -> list[QueuedRow]:
    """The claimed rows' current text. A separate statement after the claim, so
    its snapshot is newer than every change the claimed `seq` stands for."""
    rows = conn.execute(st.read, {"seqs": seqs}).fetchall()
    return [
        QueuedRow(seq, present, text, text_hash, stored)
        for seq, present, text, text_hash, stored in rows
    ]


# Stage tables already created, per connection (temp tables live as long as the session).
_staged: WeakKeyDictionary[psycopg.Connection[Any], set[str]] = WeakKeyDictionary()


def write(
    conn: psycopg.Connection[Any], st: QueueStatements, outcomes: Sequence[Outcome]
) -> WriteResult:
    """Store vectors and complete entries, in one short transaction."""
    with conn.transaction():
        staged = _staged.setdefault(conn, set())
        if st.stage_name not in staged:
            conn.execute(st.create_stage)
            staged.add(st.stage_name)
        with conn.cursor().copy(st.copy_stage) as copy:
            copy.set_types(["int8", "text", "bytea", "vector"])
            for o in outcomes:
                copy.write_row((o.seq, o.action.value, o.text_hash, o.vector))
        completed, written, deleted = conn.execute(st.write).fetchone()  # type: ignore[misc]
    return WriteResult(completed, written, deleted)


def record_failures(
    conn: psycopg.Connection[Any],
    st: QueueStatements,
    errors: dict[int, str],
    max_attempts: int,
) -> None:
    """`errors`: seq -> message."""
    with conn.transaction():
        conn.execute(
            st.fail,
            {
                "seqs": list(errors),
                "errors": [e[:2000] for e in errors.values()],
                "max_attempts": max_attempts,
            },
        )


def log_batch(conn: psycopg.Connection[Any], st: QueueStatements, stats: dict[str, Any]) -> None:
    conn.execute(st.log_batch, stats)
