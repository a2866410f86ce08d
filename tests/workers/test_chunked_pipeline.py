"""A chunked vectorizer's cycle on the real database and model: a row's chunks
are written, replaced and removed together, and never from an older text."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import TIMED_OUT, drain, embed_batch, store_batch, take_batch
from rowembed.workers.progress import ChunkProgress, slices
from rowembed.workers.runtime import ChunkPlan, Encoder

from ..conftest import MODEL
from .test_pipeline import CountingEncoder, queued, run

Conn = psycopg.Connection[Any]

LONG = " ".join(f"Paragraph {i} is about the topic number {i}." for i in range(120))


def setup(conn: Conn, table: str, bodies: dict[int, str | None], **options: Any) -> Vectorizer:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    for key, body in bodies.items():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), [key, body])
    options = {"chunking": "tokens", "chunk_tokens": 64, "chunk_overlap": 8, **options}
    return create_vectorizer(conn, table, ["body"], model=MODEL, **options)


def chunks(conn: Conn, v: Vectorizer) -> dict[int, list[tuple[int, int, int, np.ndarray, bytes]]]:
    """id -> [(chunk, start, end, vector, text_hash)], in chunk order."""
    found: dict[int, list[tuple[int, int, int, np.ndarray, bytes]]] = {}
    query = sql.SQL(
        "SELECT id, chunk, chunk_start, chunk_end, embedding, text_hash FROM {} ORDER BY id, chunk"
    ).format(v.destination)
    for key, n, start, end, vector, digest in conn.execute(query):
        found.setdefault(key, []).append((n, start, end, vector.to_numpy(), bytes(digest)))
    return found


def update(conn: Conn, table: str, key: int, body: str | None) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET body = %s WHERE id = %s").format(sql.Identifier(table)), [body, key]
    )


def test_a_long_row_is_stored_as_chunks_of_its_whole_text(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: LONG, 2: "a short row"}, passage_instruction="doc: ")
    report = run(conn, v, encoder)
    assert (report.embedded, report.written, report.truncated) == (2, 2, 0)
    stored = chunks(conn, v)
    long = stored[1]
    assert len(long) > 5 and [c[0] for c in long] == list(range(len(long)))
    assert long[0][1] == 0 and long[-1][2] == len(LONG)
    assert all(b[1] < a[2] for a, b in itertools.pairwise(long))  # overlapping
    assert len({c[4] for c in long}) == 1  # the row's hash on every chunk
    # Each chunk's vector is the model's for the instruction and that chunk's text.
    texts = ["doc: " + LONG[start:end] for _, start, end, _, _ in long]
    expected = encoder.encode(texts).vectors
    assert np.abs(np.stack([c[3] for c in long]) - expected).max() < 1e-5
    assert [(c[1], c[2]) for c in stored[2]] == [(0, len("a short row"))]
    assert queued(conn, v) == []


def test_a_shorter_text_leaves_no_chunk_behind_and_a_blanked_or_deleted_row_none(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: LONG, 2: LONG, 3: LONG})
    run(conn, v, encoder)
    update(conn, table, 1, "now short")
    update(conn, table, 2, None)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(sql.Identifier(table)))
    report = run(conn, v, encoder)
    assert (report.written, report.deleted) == (1, 1)
    stored = chunks(conn, v)
    assert list(stored) == [1]
    assert [(c[0], c[1], c[2]) for c in stored[1]] == [(0, 0, len("now short"))]


def test_chunks_of_an_older_text_are_never_written(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: LONG})
    from rowembed.pgplugin.queue import Queue

    queue = Queue(v)
    claimed = take_batch(conn, queue, encoder, limit=10, lease_seconds=60)
    result = embed_batch(claimed, v, encoder)
    update(conn, table, 1, "the row changed while the model ran")
    report = store_batch(conn, queue, claimed, result)
    queue.end_claim(conn, claimed.claim)
    assert (report.written, report.superseded) == (0, 1)
    assert chunks(conn, v) == {}
    run(conn, v, encoder)
    assert [(c[1], c[2]) for c in chunks(conn, v)[1]] == [(0, 35)]


def test_one_failing_chunk_fails_its_row_and_writes_none_of_it(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    poisoned = LONG.replace("topic number 77.", "topic number 77 POISON.")
    v = setup(conn, table, {1: poisoned, 2: "a healthy row"})
    report = run(conn, v, CountingEncoder(encoder, fail_on="POISON"))
    assert (report.written, report.failed) == (1, 1)
    assert list(chunks(conn, v)) == [2]
    error = conn.execute(sql.SQL("SELECT last_error FROM {}").format(v.queue)).fetchone()
    assert error is not None and "POISON" in error[0]


def test_a_row_past_max_chunks_is_cut_and_counted(conn: Conn, table: str, encoder: Encoder) -> None:
    v = setup(conn, table, {1: LONG}, max_chunks=3)
    report = run(conn, v, encoder)
    assert (report.written, report.truncated) == (1, 1)
    assert len(chunks(conn, v)[1]) == 3


def test_an_unchanged_row_skips_the_model(conn: Conn, table: str, encoder: Encoder) -> None:
    v = setup(conn, table, {1: LONG})
    run(conn, v, encoder)
    conn.execute(  # queued again (a duplicate hint, a second backfill)
        sql.SQL("INSERT INTO {} (id, seq) VALUES (1, nextval('rowembed.change_seq'))").format(
            v.queue
        )
    )
    counting = CountingEncoder(encoder)
    report = run(conn, v, counting)
    assert (report.unchanged, counting.texts) == (1, [])


class TimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded."""


class LimitAfter(CountingEncoder):
    """Meets the time limit at the model pass after `passes` passes."""

    def __init__(self, encoder: Encoder, passes: int) -> None:
        super().__init__(encoder)
        self.passes = passes

    def encode_tokenized(self, tokenized: Any, clock: Any = None) -> Any:
        if self.passes == 0:
            raise TimeLimit
        self.passes -= 1
        return super().encode_tokenized(tokenized, clock)


def test_a_long_row_is_embedded_in_slices_that_a_time_limit_does_not_throw_away(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    """A row with more chunks than a batch holds goes in slices: a time limit
    loses only the slice in flight and counts no attempt (a slice got done); a
    spent time budget gives the row back between slices; the next drains go on
    where it stopped, and what is stored is the row's every chunk, as a batch."""
    v = setup(conn, table, {1: LONG}, chunk_overlap=0)
    whole = encoder.chunk([LONG], ChunkPlan(64, 0, 100))
    texts = whole.tokenized.texts
    budget = sum(end - start for start, end in whole.spans[0][:3])  # about three chunks a slice
    parts = slices([end - start for start, end in whole.spans[0]], budget)
    assert len(parts) > 3
    progress = ChunkProgress()
    entry = sql.SQL("SELECT attempts, last_error, lease_until FROM {}").format(v.queue)
    with connect(database_url) as reader:

        def drain_once(model: Any, time_budget: float) -> tuple[Any, bool]:
            return drain(conn, reader, v, model, limit=10, lease_seconds=300,
                         time_budget=time_budget, max_characters=budget,
                         abort_on=(TimeLimit,), progress=progress)  # fmt: skip

        limited = LimitAfter(encoder, passes=2)
        with pytest.raises(TimeLimit):
            drain_once(limited, time_budget=60)
        assert conn.execute(entry).fetchone() == (0, None, None)  # given back, uncounted
        assert limited.texts == texts[: parts[1].stop]
        spent = CountingEncoder(encoder)
        report, more = drain_once(spent, time_budget=0)  # one slice, then given back
        assert (report.written, more) == (0, True) and spent.texts == texts[
            parts[2].start : parts[2].stop
        ]
        assert conn.execute(entry).fetchone() == (0, None, None)
        rest = CountingEncoder(encoder)
        report, more = drain_once(rest, time_budget=60)
    assert (report.written, more) == (1, False) and rest.texts == texts[parts[3].start :]
    stored = chunks(conn, v)[1]
    assert [(c[1], c[2]) for c in stored] == whole.spans[0]
    expected = encoder.encode(texts).vectors
    assert np.abs(np.stack([c[3] for c in stored]) - expected).max() < 1e-5
    assert queued(conn, v) == []


def test_a_long_row_that_finishes_no_slice_within_the_limit_counts_an_attempt(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: LONG}, chunk_overlap=0, max_attempts=1)
    budget = 200
    with connect(database_url) as reader, pytest.raises(TimeLimit):
        drain(conn, reader, v, LimitAfter(encoder, passes=0), limit=10, lease_seconds=300,
              time_budget=60, max_characters=budget, abort_on=(TimeLimit,),
              progress=ChunkProgress())  # fmt: skip
    row = conn.execute(
        sql.SQL("SELECT attempts, last_error, failed_at IS NOT NULL FROM {}").format(v.queue)
    ).fetchone()
    assert row == (1, TIMED_OUT, True)


def test_a_chunked_batch_stopped_between_slices_still_completes_rows(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    """Slices hold whole rows: a drain told to stop after every slice writes a
    row each time. (Slices of chunks sorted by length spread each row over all
    of them: two vectorizers handing back to each other's live changes then
    completed nothing, forever.)"""
    bodies = {
        i: " ".join(f"Row {i} sentence {n} is here." for n in range(15 * i)) for i in range(1, 6)
    }
    v = setup(conn, table, bodies, chunk_overlap=0)
    written = []
    with connect(database_url) as reader:
        while queued(conn, v) and len(written) < 10:
            report, _ = drain(conn, reader, v, encoder, limit=10, lease_seconds=300,
                              time_budget=60, should_stop=lambda: True)  # fmt: skip
            written.append(report.written)
    assert queued(conn, v) == [] and min(written) >= 1, written
    assert sorted(chunks(conn, v)) == [1, 2, 3, 4, 5]
