"""A worker's side of a vectorizer's queue: claim entries, read their text, write vectors.

The rules of the queue (what is claimable, priorities, lock keys, back-off, the
embedded text of a row) are SQL functions in sql/030-queue.sql; this module
calls them, and owns the one statement that writes vectors.

Correctness rests on the queue entry's `seq`: every change of a source row gives
its entry a new value from rowembed.change_seq. A worker claims entries (a
lease, committed at once), reads the rows' text in a later statement, and in
the write transaction completes only the entries whose `seq` is still the one
it claimed. A change that lands in between gives the entry a new `seq`, so the
older vector is never written and the entry stays queued for the new text.
Locks: the queue row before the embedding row, as the triggers do; the worker
skips queue rows another transaction holds, so it never waits on the
application's transactions. Each claim has its own token, held by the claiming
session until the batch is written (`end_claim`), so entries the write skipped
are claimable again at once, not after their lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ._call import call, scalar
from .vectorizers import Vectorizer


class Action(str, Enum):
    WRITE = "write"  # store the vector
    DELETE = "delete"  # the row is gone or its text is blank: no embedding
    KEEP = "keep"  # the stored vector is already of this text


@dataclass(frozen=True)
class QueuedRow:
    seq: int
    text: str | None  # None: the row is gone or its text is blank
    text_hash: bytes | None
    stored_hash: bytes | None

    @property
    def action(self) -> Action | None:
        """What to do without the model; None: embed it."""
        if self.text is None:
            return Action.DELETE
        if self.stored_hash == self.text_hash:
            return Action.KEEP
        return None


@dataclass(frozen=True)
class Outcome:
    seq: int
    action: Action
    text_hash: bytes | None = None
    vector: np.ndarray | None = None  # chunked: one row per chunk
    spans: list[tuple[int, int]] | None = None  # chunked: each chunk's characters

    def stage_rows(self) -> list[tuple[Any, ...]]:
        """Rows of the write's stage table: (seq, action, text_hash, chunk,
        chunk_start, chunk_end, chunks, embedding)."""
        if self.spans is None or self.action is not Action.WRITE:
            return [(self.seq, self.action.value, self.text_hash, None, None, None, 0, self.vector)]
        if not self.spans:  # text without a token: no chunk, the old ones go
            return [(self.seq, self.action.value, self.text_hash, None, None, None, 0, None)]
        assert self.vector is not None and len(self.vector) == len(self.spans)
        count = len(self.spans)
        return [
            (self.seq, self.action.value, self.text_hash, n, start, end, count, vector)
            for n, ((start, end), vector) in enumerate(zip(self.spans, self.vector, strict=True))
        ]


@dataclass(frozen=True)
class Claim:
    seqs: list[int]
    token: int  # held by the claiming session until end_claim() or its end
    # A suspect claimed alone (its last worker died or hung holding it): more
    # entries may be claimable, though this claim took one.
    suspect: bool = False


@dataclass(frozen=True)
class WriteResult:
    completed: int  # queue entries removed
    written: int
    deleted: int
    failed: int = 0  # entries whose own write failed, recorded as failures

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.completed + other.completed,
            self.written + other.written,
            self.deleted + other.deleted,
            self.failed + other.failed,
        )


# Errors of one row's write (a constraint or a trigger the destination's owner
# added, a value out of range): that row fails, the rest of its batch is written.
# Any other error (a dropped table, a lost connection) is the batch's.
ROW_WRITE_ERRORS = (
    psycopg.errors.IntegrityError,
    psycopg.errors.DataError,
    psycopg.errors.RaiseException,
)


def _keys(columns: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.Identifier(c) if alias is None else sql.Identifier(alias, c) for c in columns
    )


# Logged changes folded into the queue per statement (each its own short
# transaction: the queue entries it upserts stay locked until it ends), and
# statements per claim at most, while the log still has that many.
FOLD_CHANGES = 5000
FOLD_ROUNDS = 20

# How long a write waits before it tries once more the entries it skipped.
SKIPPED_RETRY_SECONDS = 0.02

# Stage tables already created, per connection (temp tables live as long as the session).
_staged: WeakKeyDictionary[psycopg.Connection[Any], set[str]] = WeakKeyDictionary()


class Queue:
    """One vectorizer's queue; the write statements are composed once."""

    def __init__(self, v: Vectorizer) -> None:
        self.vectorizer = v
        pk = v.pk_columns
        self._stage_name = f"rowembed_stage_{v.id}"
        stage = sql.Identifier(self._stage_name)
        # float4 vectors whatever the column's storage: the INSERT casts to halfvec.
        self._create_stage = sql.SQL("""
            CREATE TEMP TABLE IF NOT EXISTS {stage}
                (seq bigint, action text, text_hash bytea, chunk int, chunk_start int,
                 chunk_end int, chunks int, embedding vector)
                ON COMMIT DELETE ROWS
        """).format(stage=stage)
        self._copy_stage = sql.SQL(
            "COPY {stage} (seq, action, text_hash, chunk, chunk_start, chunk_end, chunks,"
            " embedding) FROM STDIN (FORMAT BINARY)"
        ).format(stage=stage)
        self._write = (_CHUNKED_WRITE if v.chunked else _WRITE).format(
            complete=_COMPLETE.format(queue=v.queue, stage=stage, q_keys=_keys(pk, "q")),
            stage=stage,
            dest=v.destination,
            emb=sql.Identifier(v.embedding_column),
            keys=_keys(pk),
            e_keys=_keys(pk, "e"),
            done_keys=_keys(pk, "done"),
        )

    def transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """A transaction on this vectorizer's tables, as its owner where this
        session may be (owner_transaction)."""
        return owner_transaction(conn, self.vectorizer.run_as)

    def claim(self, conn: psycopg.Connection[Any], max_rows: int, lease_seconds: float) -> Claim:
        """Lease up to `max_rows` entries, live changes first (or one suspect
        alone: rowembed.claim()), under a new token this session holds until
        `end_claim`. Commits at once. The changes logged since are folded
        into the queue first."""
        self.fold(conn)
        with self.transaction(conn):
            token = scalar(conn, "register_worker")
            rows = call(
                conn,
                "claim",
                vectorizer_id=self.vectorizer.id,
                token=token,
                max_rows=max_rows,
                lease_seconds=float(lease_seconds),
            ).fetchall()
            if not rows:
                scalar(conn, "end_claim", token=token)
        return Claim([seq for seq, _ in rows], token, any(suspect for _, suspect in rows))

    def fold(self, conn: psycopg.Connection[Any]) -> int:
        """Move the changes the triggers logged into the queue (one entry per
        key, the newest change), FOLD_CHANGES per statement; returns how many."""
        total = 0
        for _ in range(FOLD_ROUNDS):
            with self.transaction(conn):
                folded = int(
                    scalar(
                        conn,
                        "fold_changes_of",
                        vectorizer_id=self.vectorizer.id,
                        max_changes=FOLD_CHANGES,
                    )
                    or 0
                )
            total += folded
            if folded < FOLD_CHANGES:
                break
        return total

    def release(self, conn: psycopg.Connection[Any], claim: Claim) -> None:
        """Give back entries of `claim` not worked on (any session may)."""
        if claim.seqs:
            with self.transaction(conn):
                call(
                    conn,
                    "release",
                    vectorizer_id=self.vectorizer.id,
                    token=claim.token,
                    seqs=claim.seqs,
                )

    def postpone(self, conn: psycopg.Connection[Any], claim: Claim, seconds: float) -> None:
        """Give back entries of `claim`, uncounted, claimable again after
        `seconds` (their model failed as a whole: no row's fault)."""
        if claim.seqs:
            with self.transaction(conn):
                call(
                    conn,
                    "postpone",
                    vectorizer_id=self.vectorizer.id,
                    token=claim.token,
                    seqs=claim.seqs,
                    seconds=seconds,
                )

    @staticmethod
    def end_claim(conn: psycopg.Connection[Any], claim: Claim) -> None:
        """Drop the claim's token; `conn` must be the session that claimed.
        Entries of the claim still queued are claimable at once."""
        if claim.seqs:  # an empty claim ended its token at once
            scalar(conn, "end_claim", token=claim.token)

    def read(self, conn: psycopg.Connection[Any], seqs: list[int]) -> list[QueuedRow]:
        """The claimed rows' current text, in a statement after the claim."""
        with self.transaction(conn):
            rows = call(conn, "read_claimed", vectorizer_id=self.vectorizer.id, seqs=seqs)
            return [QueuedRow(*row) for row in rows.fetchall()]

    def write(self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]) -> WriteResult:
        """Store vectors and complete entries, in one short transaction; entries
        skipped while still at their claimed seq get one more try, shortly after:
        another worker's claim can hold their rows for a moment (PostgreSQL keeps
        the lock of a row it rechecked and then passed over)."""
        done, result = self._write_isolating(conn, outcomes)
        if len(done) + result.failed == len(outcomes):
            return result
        waiting = self._still_queued(conn, [o.seq for o in outcomes if o.seq not in done])
        if not waiting:  # changed meanwhile (or failed): their new version is queued
            return result
        time.sleep(SKIPPED_RETRY_SECONDS)
        _, again = self._write_isolating(conn, [o for o in outcomes if o.seq in waiting])
        return result + again

    def _write_isolating(
        self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]
    ) -> tuple[set[int], WriteResult]:
        """The batch's write; when a row's write fails, each row alone, and the
        rows that fail so are recorded as failures (back-off, then parked)."""
        try:
            return self._write_once(conn, outcomes)
        except ROW_WRITE_ERRORS as error:
            if len(outcomes) == 1:
                self.record_failures(conn, {outcomes[0].seq: f"writing the embedding: {error}"})
                return set(), WriteResult(0, 0, 0, failed=1)
        done: set[int] = set()
        total = WriteResult(0, 0, 0)
        for outcome in outcomes:
            alone_done, alone = self._write_isolating(conn, [outcome])
            done |= alone_done
            total += alone
        return done, total

    def _write_once(
        self, conn: psycopg.Connection[Any], outcomes: Sequence[Outcome]
    ) -> tuple[set[int], WriteResult]:
        staged = _staged.setdefault(conn, set())
        with self.transaction(conn):
            # Changes logged since the claim give their entries a new seq first.
            call(
                conn, "fold_changes_of", vectorizer_id=self.vectorizer.id, max_changes=FOLD_CHANGES
            )
            if self._stage_name not in staged:
                conn.execute(self._create_stage)
            with conn.cursor().copy(self._copy_stage) as copy:
                copy.set_types(["int8", "text", "bytea", "int4", "int4", "int4", "int4", "vector"])
                for o in outcomes:
                    for row in o.stage_rows():
                        copy.write_row(row)
            done, written, deleted = conn.execute(self._write).fetchone()  # type: ignore[misc]
        staged.add(self._stage_name)  # committed: a rolled back write takes the table with it
        return set(done), WriteResult(len(done), written, deleted)

    def _still_queued(self, conn: psycopg.Connection[Any], seqs: list[int]) -> set[int]:
        query = sql.SQL("SELECT seq FROM {} WHERE seq = ANY (%s)").format(self.vectorizer.queue)
        with self.transaction(conn):
            return {seq for (seq,) in conn.execute(query, [seqs])}

    def record_failures(self, conn: psycopg.Connection[Any], errors: dict[int, str]) -> None:
        """`errors`: seq -> message. Back-off and parking are rowembed.record_failures()'s."""
        with self.transaction(conn):
            call(
                conn,
                "record_failures",
                vectorizer_id=self.vectorizer.id,
                seqs=list(errors),
                errors=list(errors.values()),
            )

    def log_batch(self, conn: psycopg.Connection[Any], stats: dict[str, Any]) -> None:
        conn.execute(_LOG_BATCH, [Jsonb({**stats, "vectorizer_id": self.vectorizer.id})])

    def is_drained(self, conn: psycopg.Connection[Any]) -> bool:
        """No entry left but parked ones, no change left to fold (cheap: polled
        beside a running worker)."""
        query = sql.SQL(
            "SELECT NOT EXISTS (SELECT FROM {} WHERE failed_at IS NULL)"
            " AND NOT EXISTS (SELECT FROM {})"
        ).format(self.vectorizer.queue, self.vectorizer.change_log)
        with self.transaction(conn):
            row = conn.execute(query).fetchone()
        return bool(row and row[0])


# The stale-write guard, shared by both writes: `done` holds the entries still
# at the claimed seq (those another transaction holds are skipped), completed.
_COMPLETE = sql.SQL("""locked AS (
        SELECT q.seq FROM {queue} AS q JOIN {stage} AS st ON st.seq = q.seq
        FOR UPDATE OF q SKIP LOCKED
    ), done AS (
        DELETE FROM {queue} AS q USING locked WHERE q.seq = locked.seq
        RETURNING q.seq, {q_keys}
    )""")

# Writes or deletes the embeddings of the entries `done` completed.
_WRITE = sql.SQL("""
    WITH {complete}, removed AS (
        DELETE FROM {dest} AS e USING done JOIN {stage} AS st ON st.seq = done.seq
         WHERE st.action = 'delete' AND ({e_keys}) = ({done_keys})
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
    SELECT (SELECT coalesce(array_agg(seq), '{{}}') FROM done), (SELECT count(*) FROM written),
           (SELECT count(*) FROM removed)
""")

# The same for a chunked destination: all of a row's chunks are replaced
# together. Chunks from the new count up go (all of them for a deleted row), the
# others are upserted: the two touch different rows of one statement.
_CHUNKED_WRITE = sql.SQL("""
    WITH {complete}, per_row AS (
        SELECT DISTINCT ON (st.seq) st.seq, st.action, st.chunks FROM {stage} AS st
    ), removed AS (
        DELETE FROM {dest} AS e USING done JOIN per_row AS st ON st.seq = done.seq
         WHERE st.action <> 'keep' AND ({e_keys}) = ({done_keys}) AND e.chunk >= st.chunks
        RETURNING st.seq, st.action
    ), written AS (
        INSERT INTO {dest} ({keys}, chunk, chunk_start, chunk_end, {emb}, text_hash, embedded_at)
        SELECT {done_keys}, st.chunk, st.chunk_start, st.chunk_end, st.embedding, st.text_hash,
               now()
          FROM done JOIN {stage} AS st ON st.seq = done.seq
         WHERE st.action = 'write' AND st.chunk IS NOT NULL
        ON CONFLICT ({keys}, chunk) DO UPDATE
           SET {emb} = excluded.{emb}, text_hash = excluded.text_hash,
               chunk_start = excluded.chunk_start, chunk_end = excluded.chunk_end,
               embedded_at = excluded.embedded_at
        RETURNING 1
    )
    SELECT (SELECT coalesce(array_agg(seq), '{{}}') FROM done),
           (SELECT count(*) FROM done JOIN per_row AS st ON st.seq = done.seq
             WHERE st.action = 'write'),
           (SELECT count(DISTINCT seq) FROM removed WHERE action = 'delete')
""")

_LOG_BATCH = "SELECT rowembed._record_batch(%s)"


@contextmanager
def owner_transaction(
    conn: psycopg.Connection[Any], run_as: str | None, seconds: float | None = None
) -> Iterator[None]:
    """A transaction run as `run_as` (a vectorizer's owner, rowembed._run_as;
    None: as the session's role), each statement bounded by `seconds` if given.
    Code an owner attached to her tables runs with the rights of whoever reads
    or writes them: a superuser's worker must not lend her its own."""
    with conn.transaction():
        if run_as is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(run_as)))
        if seconds is not None:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{int(seconds * 1000)}ms"]
            )
        yield


def vectorizers_with_work(conn: psycopg.Connection[Any]) -> list[tuple[int, bool]]:
    """(id, whether live changes wait) of vectorizers with claimable entries."""
    return [(vid, changes) for vid, changes in call(conn, "vectorizers_with_work").fetchall()]


def retry_failed(conn: psycopg.Connection[Any], name: str) -> int:
    """Parked entries back into the queue; returns how many."""
    return int(scalar(conn, "retry_failed", name=name))


def prune_batch_stats(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT rowembed._prune_batch_stats()")
