"""The claim -> read -> embed -> write cycle in-process, on the real database and model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.queue import Action, Outcome, Queue
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import TIMED_OUT, drain, run_batch, take_batch
from rowembed.workers.runtime import Chunked, ChunkPlan, Encoded, Encoder, Tokenized

from ..conftest import MODEL

Conn = psycopg.Connection[Any]


class CountingEncoder:
    """The real encoder, counting the texts it is asked to embed."""

    def __init__(self, encoder: Encoder, fail_on: str | None = None) -> None:
        self.encoder = encoder
        self.fail_on = fail_on
        self.texts: list[str] = []
        self.name = encoder.name
        self.dimensions = encoder.dimensions

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return self.encoder.tokenize(texts)

    def encode_tokenized(self, tokenized: Tokenized, clock: Any = None) -> Encoded:
        self.texts.extend(tokenized.texts)
        if self.fail_on and any(self.fail_on in t for t in tokenized.texts):
            raise RuntimeError(f"injected failure on {self.fail_on!r}")
        return self.encoder.encode_tokenized(tokenized, clock)

    def encode(self, texts: Sequence[str]) -> Encoded:
        return self.encode_tokenized(self.tokenize(texts))

    def chunk(self, texts: Sequence[str], plan: ChunkPlan, instruction: str = "") -> Chunked:
        return self.encoder.chunk(texts, plan, instruction)


def setup(conn: Conn, table: str, bodies: dict[int, str | None]) -> Vectorizer:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    for key, body in bodies.items():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), [key, body])
    return create_vectorizer(conn, table, ["body"], model=MODEL)


def run(conn: Conn, v: Vectorizer, encoder: Any) -> Any:
    return run_batch(conn, Queue(v), encoder, limit=100, lease_seconds=60)


def stored(conn: Conn, v: Vectorizer) -> dict[int, np.ndarray]:
    rows = conn.execute(sql.SQL("SELECT id, embedding FROM {}").format(v.destination)).fetchall()
    return {key: vector.to_numpy() for key, vector in rows}


def queued(conn: Conn, v: Vectorizer) -> list[int]:
    return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(v.queue))]


def test_a_batch_stores_the_model_vectors_and_empties_the_queue(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    texts = {1: "the cat sat on the mat", 2: "stock markets fell sharply", 3: "a recipe for soup"}
    v = setup(conn, table, texts)
    report = run(conn, v, encoder)
    assert (report.claimed, report.embedded, report.written) == (3, 3, 3)
    vectors = stored(conn, v)
    expected = encoder.encode(list(texts.values())).vectors
    for i, key in enumerate(texts):
        assert np.abs(vectors[key] - expected[i]).max() <= 1e-6
    assert queued(conn, v) == []


def test_a_vector_of_an_older_text_is_never_written(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: "old text about cats"})
    queue = Queue(v)
    seqs = queue.claim(conn, 10, 60).seqs
    rows = queue.read(conn, seqs)
    vectors = encoder.encode([r.text for r in rows]).vectors
    # The row changes while the model runs.
    conn.execute(
        sql.SQL("UPDATE {} SET body = 'new text about dogs' WHERE id = 1").format(
            sql.Identifier(table)
        )
    )
    result = queue.write(conn, [Outcome(rows[0].seq, Action.WRITE, rows[0].text_hash, vectors[0])])
    assert (result.completed, result.written) == (0, 0)
    assert stored(conn, v) == {}
    assert queued(conn, v) == [1]
    run(conn, v, encoder)
    assert (
        np.abs(stored(conn, v)[1] - encoder.encode(["new text about dogs"]).vectors[0]).max() < 1e-6
    )


def test_a_row_deleted_while_embedding_leaves_no_orphan(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: "short lived"})
    queue = Queue(v)
    rows = queue.read(conn, queue.claim(conn, 10, 60).seqs)
    vector = encoder.encode([rows[0].text]).vectors[0]
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(sql.Identifier(table)))
    queue.write(conn, [Outcome(rows[0].seq, Action.WRITE, rows[0].text_hash, vector)])
    assert stored(conn, v) == {}
    assert queued(conn, v) == []


def test_requeued_rows_with_unchanged_text_skip_the_model(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: "alpha", 2: "beta"})
    counting = CountingEncoder(encoder)
    run(conn, v, counting)
    assert sorted(counting.texts) == ["alpha", "beta"]
    # The same rows queued again (a duplicate hint, a second backfill, a key move).
    for _ in range(3):
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, seq) SELECT id, nextval('rowembed.change_seq')"
                " FROM {} ON CONFLICT (id) DO UPDATE SET seq = excluded.seq"
            ).format(v.queue, sql.Identifier(table))
        )
    report = run(conn, v, counting)
    assert (report.claimed, report.unchanged, report.embedded) == (2, 2, 0)
    assert sorted(counting.texts) == ["alpha", "beta"]  # no new model calls
    assert queued(conn, v) == []


def test_null_and_empty_text_get_no_embedding_and_no_error(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: None, 2: "", 3: "   ", 4: "real text"})
    report = run(conn, v, encoder)
    assert (report.embedded, report.failed) == (1, 0)
    assert list(stored(conn, v)) == [4]
    assert queued(conn, v) == []
    conn.execute(sql.SQL("UPDATE {} SET body = NULL WHERE id = 4").format(sql.Identifier(table)))
    run(conn, v, encoder)
    assert stored(conn, v) == {}  # emptied text: the old embedding goes


def test_texts_over_the_model_limit_are_truncated_and_counted(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {1: "word " * 3000, 2: "short"})
    report = run(conn, v, encoder)
    assert (report.embedded, report.truncated, report.failed) == (2, 1, 0)


def test_a_poison_row_is_isolated_backs_off_and_is_parked(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    texts = {i: f"ordinary text {i}" for i in range(1, 17)}
    texts[11] = "poison pill"
    v = setup(conn, table, texts)
    failing = CountingEncoder(encoder, fail_on="poison")
    report = run(conn, v, failing)
    assert (report.embedded, report.failed, report.written) == (15, 1, 15)
    assert sorted(stored(conn, v)) == [k for k in texts if k != 11]
    row = conn.execute(
        sql.SQL(
            "SELECT attempts, last_error, lease_until > now(), failed_at FROM {} WHERE id = 11"
        ).format(v.queue)
    ).fetchone()
    assert row is not None
    assert row[0] == 1 and "injected failure" in row[1] and row[2] and row[3] is None
    for _ in range(v.max_attempts - 1):
        conn.execute(sql.SQL("UPDATE {} SET lease_until = NULL").format(v.queue))  # skip back-off
        run(conn, v, failing)
    parked = conn.execute(
        "SELECT key, attempts, parked, last_error FROM rowembed.errors() WHERE vectorizer = %s",
        [v.name],
    ).fetchall()
    assert parked == [
        ({"id": 11}, v.max_attempts, True, "RuntimeError: injected failure on 'poison'")
    ]
    assert run(conn, v, failing).claimed == 0  # parked entries are not claimed

    failing.fail_on = None  # the fault is fixed
    assert conn.execute("SELECT rowembed.retry_failed(%s)", [v.name]).fetchone() == (1,)
    assert run(conn, v, failing).embedded == 1
    assert sorted(stored(conn, v)) == sorted(texts)
    assert queued(conn, v) == []


@pytest.mark.parametrize("fault", ["check", "trigger"])
def test_a_row_whose_write_fails_is_isolated_and_recorded(
    conn: Conn, table: str, encoder: Encoder, fault: str
) -> None:
    """The destination's owner may add a constraint or a trigger that rejects a
    row: that row fails with the error, the rest of its batch is written."""
    v = setup(conn, table, {i: f"ordinary text {i}" for i in range(1, 9)})
    if fault == "check":
        conn.execute(sql.SQL("ALTER TABLE {} ADD CHECK (id <> 5)").format(v.destination))
    else:
        conn.execute(
            "CREATE FUNCTION refuse_five() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN IF NEW.id = 5 THEN RAISE EXCEPTION 'no five here'; END IF;"
            " RETURN NEW; END$$"
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER refuse_five BEFORE INSERT ON {} FOR EACH ROW"
                " EXECUTE FUNCTION refuse_five()"
            ).format(v.destination)
        )
    report = run(conn, v, encoder)
    assert (report.written, report.failed, report.superseded) == (7, 1, 0)
    assert sorted(stored(conn, v)) == [1, 2, 3, 4, 6, 7, 8]
    ((key, error),) = conn.execute(
        "SELECT key, last_error FROM rowembed.errors() WHERE vectorizer = %s", [v.name]
    ).fetchall()
    assert key == {"id": 5}
    assert "writing the embedding" in error
    assert ("check constraint" if fault == "check" else "no five here") in error
    if fault == "trigger":
        conn.execute("DROP FUNCTION refuse_five() CASCADE")


def test_a_changed_poison_row_starts_over(conn: Conn, table: str, encoder: Encoder) -> None:
    v = setup(conn, table, {1: "poison pill"})
    run(conn, v, CountingEncoder(encoder, fail_on="poison"))
    conn.execute(sql.SQL("UPDATE {} SET body = 'cured' WHERE id = 1").format(sql.Identifier(table)))
    assert run(conn, v, encoder).embedded == 1
    assert list(stored(conn, v)) == [1]


def test_a_model_of_the_wrong_size_fails_clearly(conn: Conn, table: str, encoder: Encoder) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x')").format(sql.Identifier(table)))
    v = create_vectorizer(conn, table, ["body"], model="BAAI/bge-base-en-v1.5")
    report = run(conn, v, encoder)
    assert report.failed == 0  # the model's fault, not the row's: the row waits
    error = conn.execute(sql.SQL("SELECT last_error FROM {}").format(v.queue)).fetchone()
    assert error == (None,)
    (now,) = status(conn, v.name)
    assert now.problem is not None
    assert "gives 384 dimensions" in now.problem and "stores 768" in now.problem


@pytest.mark.parametrize("limit", [1, 2])
def test_claims_do_not_overlap(conn: Conn, database_url: str, table: str, limit: int) -> None:
    v = setup(conn, table, {i: f"text {i}" for i in range(1, 6)})
    queue = Queue(v)
    from rowembed.pgplugin import connect

    with connect(database_url) as other:
        first = queue.claim(conn, limit, 60).seqs
        second = queue.claim(other, limit, 60).seqs
    assert len(first) == len(second) == limit
    assert not set(first) & set(second)


@pytest.mark.parametrize("chunking", ["none", "tokens"])
def test_a_missing_model_is_one_problem_and_its_rows_wait_for_it(
    conn: Conn, table: str, encoder: Encoder, chunking: str
) -> None:
    """Not an error on every row (nor attempts toward parking them): the status
    shows the problem once; the rows wait, and are embedded once the model is there."""
    from rowembed.pgplugin.status import errors
    from rowembed.settings import Settings
    from rowembed.workers.state import LazyEncoder

    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1, 'text'), (2, 'more'), (3, 'and more')").format(t)
    )
    v = create_vectorizer(conn, table, ["body"], model=MODEL, chunking=chunking)
    missing = LazyEncoder("no-such-org/no-such-model", Settings(device="cpu"))
    report = run(conn, v, missing)
    assert (report.failed, report.embedded, report.claimed) == (0, 0, 0)
    entries = conn.execute(
        sql.SQL("SELECT attempts, last_error, failed_at, lease_until > now() FROM {}").format(
            v.queue
        )
    ).fetchall()
    assert entries == [(0, None, None, True)] * 3  # waiting, uncounted, no error of theirs
    assert errors(conn, v.name) == []
    (now,) = status(conn, v.name)
    assert now.problem is not None
    assert now.problem.startswith("its model cannot be used: ModelNotFoundError: model")
    assert run(conn, v, missing).claimed == 0  # they wait: no worker spins on them
    conn.execute(sql.SQL("UPDATE {} SET lease_until = NULL").format(v.queue))  # the wait is over
    assert run(conn, v, encoder).embedded == 3
    (now,) = status(conn, v.name)
    assert now.problem is None and now.pending == 0


def test_drain_gives_claims_back_when_it_stops_or_fails(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    v = setup(conn, table, {i: f"text number {i}" for i in range(1, 31)})
    held = sql.SQL("SELECT count(*) FROM {} WHERE claimed_by IS NOT NULL OR attempts > 0").format(
        v.queue
    )

    def fail() -> bool:
        raise RuntimeError("the broker went away")

    with connect(database_url) as reader:
        report, more = drain(
            conn, reader, v, encoder, limit=10, lease_seconds=300, time_budget=60,
            should_stop=lambda: True,
        )  # fmt: skip
        # The first batch's first slice is written; the rest of it, and the batch
        # claimed meanwhile, are given back untouched.
        assert 0 < report.written < 10 and more
        left = 30 - report.written
        assert len(queued(conn, v)) == left and conn.execute(held).fetchone() == (0,)

        with pytest.raises(RuntimeError, match="broker went away"):
            drain(conn, reader, v, encoder, limit=10, lease_seconds=300, time_budget=60,
                  should_stop=fail)  # fmt: skip
        assert len(queued(conn, v)) == left and conn.execute(held).fetchone() == (0,)

        report, more = drain(conn, reader, v, encoder, limit=10, lease_seconds=300, time_budget=60)
    assert (report.written, more) == (left, False) and queued(conn, v) == []


def test_a_drain_stops_between_the_slices_of_a_batch_and_keeps_what_is_done(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    """Another table's live change waits for a slice, not a batch: asked
    between slices, stopping writes the rows embedded so far (each embedded
    once) and gives the others back at once, with no attempt counted."""
    texts = {i: f"row {i} " + "word " * (i % 7) for i in range(1, 41)}
    v = setup(conn, table, texts)
    asked: list[int] = []

    def third_time() -> bool:
        asked.append(1)
        return len(asked) == 3

    counting = CountingEncoder(encoder)
    untouched = sql.SQL("SELECT count(*) FROM {} WHERE claimed_by IS NULL AND attempts = 0").format(
        v.queue
    )
    with connect(database_url) as reader:
        report, more = drain(conn, reader, v, counting, limit=40, lease_seconds=300,
                             time_budget=60, should_stop=third_time)  # fmt: skip
        assert len(asked) == 3 and more
        assert 0 < report.written < 40 and report.claimed == report.written
        assert report.written == len(counting.texts)  # two slices of eight
        assert conn.execute(untouched).fetchone() == (40 - report.written,)
        rest, more = drain(conn, reader, v, counting, limit=40, lease_seconds=300,
                           time_budget=60)  # fmt: skip
    assert (report.written + rest.written, more) == (40, False)
    assert sorted(counting.texts) == sorted(texts.values())  # none embedded twice
    assert queued(conn, v) == []


def test_the_passage_instruction_is_part_of_the_embedded_text(
    conn: Conn, table: str, encoder: Encoder
) -> None:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'cats nap'), (2, ' ')").format(t))
    v = create_vectorizer(conn, table, ["body"], model=MODEL, passage_instruction="passage: ")
    assert v.passage_instruction == "passage: "
    report = run(conn, v, encoder)
    assert (report.embedded, report.written) == (1, 1)
    expected = encoder.encode(["passage: cats nap"]).vectors[0]
    assert np.abs(stored(conn, v)[1] - expected).max() < 1e-6
    texts = conn.execute(
        sql.SQL("SELECT id, rowembed.embedded_text(d) FROM {} AS d ORDER BY id").format(t)
    ).fetchall()
    assert texts == [(1, "passage: cats nap"), (2, None)]  # blank text stays blank
    # The stored hash is of the embedded text: a backfill finds nothing to do.
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    conn.execute("SELECT rowembed.backfill_step(%s, 100)", [v.id])
    assert queued(conn, v) == []


def test_rows_row_level_security_hides_are_errors_not_deletions(
    conn: Conn, table: str, encoder: Encoder, database_url: str
) -> None:
    """A worker role without BYPASSRLS cannot see every row: its batch records
    why on the rows (errors(), back-off) and deletes nothing."""
    t = sql.Identifier(table)
    v = setup(conn, table, {1: "visible", 2: "hidden from the worker"})
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
    conn.execute(sql.SQL("CREATE POLICY only_one ON {} USING (id = 1)").format(t))
    role = f"rls_worker_{v.id}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute("SELECT rowembed.grant_worker(%s, %s)", [role, v.name])
    conn.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    with connect(database_url.replace("postgres@", f"{role}@")) as worker:
        report = run(worker, v, encoder)
        hidden = rf"row-level security on public.{table} hides rows"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=hidden):
            worker.execute("SELECT rowembed.backfill_step(%s, 10)", [v.id])
    assert report.claimed == 0
    assert queued(conn, v) == [1, 2]
    failed = conn.execute(
        "SELECT key, last_error FROM rowembed.errors() WHERE vectorizer = %s", [v.name]
    ).fetchall()
    assert [key for key, _ in failed] == [{"id": 1}, {"id": 2}]
    assert all(f"row-level security on public.{table} hides rows" in error for _, error in failed)


def test_rows_whose_worker_died_are_claimed_alone_and_parked_after_max_attempts(
    conn: Conn, table: str, encoder: Encoder, database_url: str
) -> None:
    """A worker killed (or hung past its hard limit) while holding rows: once is
    no evidence (they are claimed as usual), but rows whose worker died with them
    twice are claimed alone, and one that has killed its worker max_attempts
    times is parked with that error; the rest go on."""
    v = setup(conn, table, {i: f"text {i}" for i in range(1, 7)})
    queue = Queue(v)
    for _ in range(2):
        with connect(database_url) as doomed:
            held = queue.claim(doomed, 3, 60)  # its session ends: the worker died
        assert not held.suspect and len(held.seqs) == 3
    conn.execute(
        sql.SQL("UPDATE {} SET attempts = 5 WHERE seq = %s").format(v.queue), [held.seqs[0]]
    )
    first = queue.claim(conn, 100, 60)
    assert first.suspect and len(first.seqs) == 1 and first.seqs[0] in held.seqs[1:]
    queue.release(conn, first)
    with connect(database_url) as reader:
        report, _ = drain(conn, reader, v, encoder, limit=100, lease_seconds=60, time_budget=60)
    assert report.written == 5
    assert len(stored(conn, v)) == 5
    parked = conn.execute(
        "SELECT attempts, parked, last_error FROM rowembed.errors() WHERE vectorizer = %s",
        [v.name],
    ).fetchall()
    assert parked == [
        (5, True, "the worker process died or hung while embedding this row (5 attempts)")
    ]


def test_an_entry_the_application_held_during_the_write_waits_for_no_lease(
    conn: Conn, table: str, encoder: Encoder, database_url: str
) -> None:
    """The application deletes a row while its batch is embedded and rolls back
    after the worker's write skipped the entry it held: the entry is claimable
    again at once (its claim ended with the batch), not after the 300 s lease."""
    v = setup(conn, table, {1: "first text", 2: "second text"})
    (seq_of_two,) = conn.execute(
        sql.SQL("SELECT seq FROM {} WHERE id = 2").format(v.queue)
    ).fetchone()
    delete = sql.SQL("DELETE FROM {} WHERE id = 2").format(sql.Identifier(table))
    with connect(database_url) as app, connect(database_url) as reader:

        class ApplicationChangesRowTwo(CountingEncoder):
            def encode_tokenized(self, tokenized: Tokenized, clock: Any = None) -> Encoded:
                if not self.texts:  # its trigger holds row 2's queue entry until it ends
                    app.execute("BEGIN")
                    app.execute(delete)
                return super().encode_tokenized(tokenized, clock)

        report, _ = drain(
            conn,
            reader,
            v,
            ApplicationChangesRowTwo(encoder),
            limit=100,
            lease_seconds=300,
            time_budget=60,
        )
        assert (report.written, report.superseded) == (1, 1)
        app.execute("ROLLBACK")
        # The worker's session lives on, as it does between tasks.
        assert Queue(v).claim(conn, 10, 300).seqs == [seq_of_two]


def test_an_entry_held_for_a_moment_at_the_write_is_completed_on_a_second_try(
    conn: Conn, table: str, encoder: Encoder, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds the row lock of a claimed entry during the write (as a
    worker's claim can, for a moment), then lets go: the write tries the entry
    once more and completes it, instead of leaving it to be embedded again."""
    v = setup(conn, table, {1: "held for a moment"})
    queue = Queue(v)
    claim = queue.claim(conn, 10, 60)
    (row,) = queue.read(conn, claim.seqs)
    vector = encoder.encode([row.text or ""]).vectors[0]
    with connect(database_url) as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("SELECT FROM {} FOR UPDATE").format(v.queue))
        still_queued = Queue._still_queued

        def let_go_then_look(self: Queue, c: Conn, seqs: list[int]) -> set[int]:
            holder.execute("COMMIT")  # after the first try skipped it
            return still_queued(self, c, seqs)

        monkeypatch.setattr(Queue, "_still_queued", let_go_then_look)
        result = queue.write(conn, [Outcome(row.seq, Action.WRITE, row.text_hash, vector)])
    assert (result.completed, result.written) == (1, 1)
    assert queued(conn, v) == [] and list(stored(conn, v)) == [1]


class TimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded."""


class SlowOnEncoder(CountingEncoder):
    """Meets the time limit whenever a batch holds `slow`."""

    def encode_tokenized(self, tokenized: Tokenized, clock: Any = None) -> Encoded:
        if self.fail_on and any(self.fail_on in t for t in tokenized.texts):
            raise TimeLimit
        return super().encode_tokenized(tokenized, clock)


def test_a_row_that_meets_the_time_limit_alone_counts_and_is_parked(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    """Beside others it is given back and blames no one; alone, it counts an
    attempt (backed off), and is parked after max_attempts with a clear error."""
    v = setup(conn, table, {1: "one", 2: "SLOW two", 3: "three"})
    conn.execute("SELECT rowembed.alter_vectorizer(%s, max_attempts => 2)", [v.name])
    slow = SlowOnEncoder(encoder, fail_on="SLOW")
    errors = sql.SQL("SELECT id, attempts, last_error, failed_at IS NOT NULL FROM {}").format(
        v.queue
    )
    with connect(database_url) as reader:

        def drain_once(limit: int) -> None:
            with pytest.raises(TimeLimit):
                drain(conn, reader, v, slow, limit=limit, lease_seconds=300, time_budget=60,
                      abort_on=(TimeLimit,))  # fmt: skip

        drain_once(limit=10)
        assert [r[2] for r in conn.execute(errors)] == [None, None, None]  # nobody blamed
        assert run_batch(conn, Queue(v), encoder, limit=1, lease_seconds=60).written == 1  # row 1
        for attempt in (1, 2):
            drain_once(limit=1)
            (row,) = [r for r in conn.execute(errors) if r[0] == 2]
            assert row[1:] == (attempt, TIMED_OUT, attempt == 2)
            conn.execute(sql.SQL("UPDATE {} SET lease_until = NULL").format(v.queue))
        report, _ = drain(conn, reader, v, slow, limit=10, lease_seconds=300, time_budget=60)
    assert report.written == 1 and queued(conn, v) == [2]  # row 3; row 2 stays parked


def test_a_batch_holds_the_work_that_fits_and_gives_the_rest_back(
    conn: Conn, database_url: str, table: str, encoder: Encoder
) -> None:
    """Claims are sized by the text to embed: past max_characters the rows go
    back at once (no attempt counted), the first row always stays, and the
    drain goes on in batches of that size until the queue is empty."""
    v = setup(conn, table, {i: f"row {i:02} " + "x" * 90 for i in range(1, 11)})  # 97 chars
    with connect(database_url) as reader:
        batch = take_batch(reader, Queue(v), encoder, limit=10, lease_seconds=60,
                           max_characters=250)  # fmt: skip
        assert len(batch.to_embed) == 2 and batch.more_may_remain(limit=10)
        given_back = sql.SQL(
            "SELECT count(*) FROM {} WHERE claimed_by IS NULL AND attempts = 0"
        ).format(v.queue)
        assert conn.execute(given_back).fetchone() == (8,)
        Queue(v).release(reader, batch.claim)
        one = take_batch(reader, Queue(v), encoder, limit=10, lease_seconds=60,
                         max_characters=10)  # fmt: skip
        assert len(one.to_embed) == 1  # larger than the budget, alone
        Queue(v).release(reader, one.claim)
        report, more = drain(conn, reader, v, encoder, limit=10, lease_seconds=60,
                             time_budget=60, max_characters=250)  # fmt: skip
    assert (report.written, more, queued(conn, v)) == (10, False, [])
    assert report.characters == 970


def test_no_row_is_claimed_beside_a_suspect_while_it_is_embedded(
    conn: Conn, table: str, encoder: Encoder, database_url: str
) -> None:
    """Were the suspect to kill the process again, a batch prefetched meanwhile
    would die with it, and its innocent rows would be counted for it."""
    v = setup(conn, table, {i: f"text {i}" for i in range(1, 7)})
    queue = Queue(v)
    for _ in range(2):
        with connect(database_url) as doomed:
            held = queue.claim(doomed, 1, 60)  # its session ends: the worker died
    claimed_meanwhile: list[int] = []

    class Watching(CountingEncoder):
        def encode_tokenized(self, tokenized: Tokenized, clock: Any = None) -> Encoded:
            time.sleep(0.3)  # time for a prefetch, were there one
            with connect(database_url) as look:
                count = look.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE claimed_by IS NOT NULL").format(v.queue)
                ).fetchone()
            claimed_meanwhile.append(count[0] if count else -1)
            return super().encode_tokenized(tokenized, clock)

    with connect(database_url) as reader:
        report, more = drain(conn, reader, v, Watching(encoder), limit=2, lease_seconds=60,
                             time_budget=60)  # fmt: skip
    assert (report.written, more) == (6, False)
    assert claimed_meanwhile[0] == 1, claimed_meanwhile  # the suspect (held), alone
    assert len(held.seqs) == 1
