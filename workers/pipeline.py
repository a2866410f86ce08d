"""Batches of work for one vectorizer, in three stages: take (claim, read,
tokenize), embed, store; and `drain`, which overlaps them.

Knows the queue (rowembed.pgplugin.queue) and the model runtime; knows nothing
of Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import psycopg

from rowembed.pgplugin.queue import Action, Claim, Outcome, Queue, QueuedRow
from rowembed.pgplugin.vectorizers import Vectorizer

from .progress import ChunkProgress, RowProgress, slices
from .runtime import Chunked, ChunkPlan, Encoded, Tokenized
from .runtime.isolate import SYSTEMIC, DimensionMismatch, Isolated, describe, encode_isolating
from .runtime.stages import StageClock, timed

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What the pipeline needs of a model (runtime.Encoder, or a lazy wrapper)."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def tokenize(self, texts: Sequence[str]) -> Tokenized: ...

    def encode_tokenized(
        self, tokenized: Tokenized, clock: StageClock | None = None
    ) -> Encoded: ...

    def encode(self, texts: Sequence[str]) -> Encoded: ...

    def chunk(self, texts: Sequence[str], plan: ChunkPlan, instruction: str = "") -> Chunked: ...


@dataclass
class BatchReport:
    claimed: int = 0
    embedded: int = 0
    written: int = 0
    deleted: int = 0
    unchanged: int = 0
    superseded: int = 0  # entries whose row changed again while we worked
    truncated: int = 0
    failed: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    characters: int = 0  # of the texts the model embedded: what claims are sized by
    seconds: float = 0.0

    def add(self, other: BatchReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Claimed:
    """A claimed batch, read and tokenized: ready for the model."""

    claim: Claim
    outcomes: list[Outcome]  # rows that need no model: deleted, emptied, unchanged
    to_embed: list[QueuedRow]
    tokenized: Tokenized | None  # None when tokenizing failed: the model stage records why
    started: float
    # A chunked vectorizer's: the inputs are chunks (`tokenized` holds them), and
    # rows whose text could not be cut have an error (index into to_embed).
    chunked: Chunked | None = None
    errors: dict[int, str] = field(default_factory=dict)
    trimmed: bool = False  # rows over the batch's work were given back
    systemic: str | None = None  # the model (its tokenizer) could not be used: why

    @property
    def seqs(self) -> list[int]:
        return self.claim.seqs

    def more_may_remain(self, limit: int) -> bool:
        """A full claim, a trimmed one, or a suspect claimed alone leaves more to claim."""
        return len(self.seqs) >= limit or self.trimmed or self.claim.suspect


def take_batch(
    conn: psycopg.Connection[Any],
    queue: Queue,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    max_characters: int | None = None,
    clock: StageClock | None = None,
) -> Claimed:
    """The take stage: claim up to `limit` entries, read their rows, give back
    those past `max_characters` of text to embed (the work a batch may hold on
    this machine; the first row always stays), tokenize the texts that need the
    model."""
    started = time.monotonic()
    with timed(clock, "claim"):
        claim = queue.claim(conn, limit, lease_seconds)
    seqs = claim.seqs
    try:
        with timed(clock, "read"):
            rows = queue.read(conn, seqs) if seqs else []
    except psycopg.Error as exc:
        if conn.broken:
            raise
        # The source cannot be read as it is (row-level security, a change in
        # flight): an error on the rows, with back-off, not a task that fails
        # and leaves them claimed with nothing recorded.
        error = f"reading the row failed: {str(exc).strip()}"
        queue.record_failures(conn, dict.fromkeys(seqs, error))
        queue.end_claim(conn, claim)
        return Claimed(Claim([], claim.token), [], [], None, started)
    outcomes: list[Outcome] = []
    to_embed = []
    spare: list[int] = []
    characters = 0
    for row in rows:
        if row.action is not None:
            outcomes.append(Outcome(row.seq, row.action))
        elif (
            max_characters is None
            or not to_embed
            or characters + len(row.text or "") <= max_characters
        ):
            to_embed.append(row)
            characters += len(row.text or "")
        else:
            spare.append(row.seq)
    if spare:  # at once: another batch (or worker) takes them
        queue.release(conn, Claim(spare, claim.token))
        given_back = set(spare)
        claim = Claim([s for s in seqs if s not in given_back], claim.token, claim.suspect)
    tokenized = None
    if to_embed and queue.vectorizer.chunked:
        try:
            with timed(clock, "tokenize"):
                chunked, errors = _chunk(encoder, queue.vectorizer, to_embed)
        except SYSTEMIC as exc:  # a missing model: the rows wait for it (store_batch)
            return Claimed(claim, outcomes, to_embed, None, started, systemic=describe(exc))
        return Claimed(
            claim, outcomes, to_embed, chunked.tokenized, started, chunked, errors, bool(spare)
        )
    if to_embed:
        try:
            with timed(clock, "tokenize"):
                tokenized = encoder.tokenize(_texts(to_embed))
        except Exception:
            log.debug("tokenizing failed; the model stage will record the error", exc_info=True)
    return Claimed(claim, outcomes, to_embed, tokenized, started, trimmed=bool(spare))


def _chunk(
    encoder: TextEncoder, v: Vectorizer, rows: Sequence[QueuedRow]
) -> tuple[Chunked, dict[int, str]]:
    """The rows' texts in chunks (without the passage instruction, which each
    chunk gets again); when that fails, row by row, and errors for those that fail."""
    plan = ChunkPlan(v.chunk_tokens, v.chunk_overlap, v.max_chunks)
    instruction = v.passage_instruction
    texts = [t.removeprefix(instruction) for t in _texts(rows)]
    try:
        return encoder.chunk(texts, plan, instruction), {}
    except SYSTEMIC:
        raise
    except Exception:
        log.debug("chunking a batch failed; chunking its rows one by one", exc_info=True)
    ids: list[list[int]] = []
    chunk_texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    cut: list[bool] = []
    errors: dict[int, str] = {}
    for i, text in enumerate(texts):
        try:
            one = encoder.chunk([text], plan, instruction)
        except Exception as exc:
            errors[i] = f"chunking failed: {type(exc).__name__}: {exc}"
            spans.append([])
            cut.append(False)
            continue
        ids += one.tokenized.ids
        chunk_texts += one.tokenized.texts
        spans += one.spans
        cut += one.cut
    return Chunked(Tokenized(chunk_texts, ids, [False] * len(ids)), spans, cut), errors


def _texts(rows: Sequence[QueuedRow]) -> list[str]:
    return [r.text or "" for r in rows]  # rows to embed have text (QueuedRow.action)


# A batch is embedded in about this many slices of whole rows (rows of like
# lengths together, so each pads little) when it may stop between them.
SLICES_PER_BATCH = 8


def embed_batch(
    claimed: Claimed,
    vectorizer: Vectorizer,
    encoder: TextEncoder,
    abort_on: tuple[type[BaseException], ...] = (),
    clock: StageClock | None = None,
    stop: Callable[[], bool] | None = None,
) -> Isolated:
    """The embed stage: vectors for `claimed.to_embed`, failing inputs isolated
    (`abort_on`: exceptions that end the stage instead, such as a time limit).
    With `stop`, in slices, asking it between them: when it says so the inputs
    not reached have neither a vector nor an error (`_unfinished` names their rows)."""
    if not claimed.to_embed:
        return Isolated()
    if claimed.systemic is not None:
        return Isolated(systemic=claimed.systemic)
    tokenized = claimed.tokenized
    if claimed.chunked is not None and not claimed.chunked.tokenized.ids:
        return Isolated()  # no row had a token of text
    if tokenized is None:
        texts = _texts(claimed.to_embed)
        return encode_isolating(
            lambda part: _checked(encoder, vectorizer).encode(part), texts, abort_on=abort_on
        )
    parts = [list(range(len(tokenized.ids)))]
    if stop is not None:
        parts = _slices_of_rows(claimed, tokenized)
    result = Isolated()
    for n, inputs in enumerate(parts):
        if n and stop is not None and stop():
            break
        done = encode_isolating(
            lambda part: _checked(encoder, vectorizer).encode_tokenized(
                tokenized.subset(part), clock
            ),
            inputs,  # rows, or a chunked vectorizer's chunks
            abort_on=abort_on,
        )
        if done.systemic is not None:  # no slice can do better
            return Isolated(systemic=done.systemic)
        result.vectors.update({inputs[i]: v for i, v in done.vectors.items()})
        result.errors.update({inputs[i]: e for i, e in done.errors.items()})
        for counter in ("truncated", "tokens", "padded_tokens", "calls"):
            setattr(result, counter, getattr(result, counter) + getattr(done, counter))
    return result


def _slices_of_rows(claimed: Claimed, tokenized: Tokenized) -> list[list[int]]:
    """The batch's inputs in about SLICES_PER_BATCH slices of whole rows (a
    chunked row's chunks all in one: each slice completes rows, so stopping
    after any makes progress), rows of like lengths together."""
    if claimed.chunked is None:
        rows = [range(i, i + 1) for i in range(len(tokenized.ids))]
    else:
        rows = [r for r in claimed.chunked.inputs_of() if len(r)]  # rows cut into no chunk: none
    sizes = [sum(len(tokenized.ids[i]) for i in r) for r in rows]
    order = sorted(range(len(rows)), key=lambda r: sizes[r])
    cut = slices([sizes[r] for r in order], -(-sum(sizes) // SLICES_PER_BATCH))
    return [[i for k in part for i in rows[order[k]]] for part in cut]


def _unfinished(claimed: Claimed, result: Isolated) -> list[int]:
    """Indices into `to_embed` of rows an embed stage stopped short of: an input
    of theirs has neither a vector nor an error."""
    if result.systemic is not None:
        return []  # store_batch postpones them all
    if not claimed.to_embed or (claimed.chunked is not None and not claimed.chunked.tokenized.ids):
        return []
    reached = result.vectors.keys() | result.errors.keys()
    if claimed.chunked is None:
        return [i for i in range(len(claimed.to_embed)) if i not in reached]
    return [
        i
        for i, inputs in enumerate(claimed.chunked.inputs_of())
        if i not in claimed.errors and not set(inputs) <= reached
    ]


def store_batch(
    conn: psycopg.Connection[Any],
    queue: Queue,
    claimed: Claimed,
    result: Isolated,
    *,
    worker: str = "",
    clock: StageClock | None = None,
) -> BatchReport:
    """The store stage: write the vectors, record failures, log the batch. When
    the model as a whole failed (missing, wrong size), the rows are no more at
    fault than they were: they wait for it, uncounted, and the batch's log says
    why (`status()` shows it as the vectorizer's problem)."""
    vectorizer = queue.vectorizer
    to_embed = claimed.to_embed
    unfinished = set(_unfinished(claimed, result))  # given back already
    if result.systemic is not None:
        unfinished = set(range(len(to_embed)))
        queue.postpone(
            conn, Claim([r.seq for r in to_embed], claimed.claim.token), MODEL_RETRY_SECONDS
        )
        _say_once(vectorizer, result.systemic)
        written, errors, truncated = [], {}, 0
    elif claimed.chunked is None:
        written, errors = _row_outcomes(claimed, result)
        truncated = result.truncated
    else:
        written, errors = _chunked_outcomes(claimed, claimed.chunked, result, unfinished)
        truncated = sum(claimed.chunked.cut)
    outcomes = claimed.outcomes + written
    report = BatchReport(
        claimed=len(claimed.seqs) - len(unfinished),
        unchanged=sum(o.action is Action.KEEP for o in claimed.outcomes),
        embedded=len(written),
        failed=len(errors),
        truncated=truncated,
        tokens=result.tokens,
        padded_tokens=result.padded_tokens,
        characters=sum(len(r.text or "") for i, r in enumerate(to_embed) if i not in unfinished),
    )
    if errors:
        queue.record_failures(conn, {to_embed[i].seq: error for i, error in errors.items()})
        log.warning(
            "vectorizer %s: %d of %d rows failed: %s",
            vectorizer.name,
            len(errors),
            len(to_embed),
            next(iter(errors.values())),
        )
    if outcomes:
        with timed(clock, "write"):
            written = queue.write(conn, outcomes)
        report.written = written.written
        report.deleted = written.deleted
        report.failed += written.failed
        report.superseded = len(outcomes) - written.completed - written.failed
    report.seconds = time.monotonic() - claimed.started
    queue.log_batch(conn, {**asdict(report), "worker": worker, "problem": result.systemic})
    return report


# How long rows wait for a model that failed as a whole before a worker tries again.
MODEL_RETRY_SECONDS = 60.0
_said: set[tuple[int, str]] = set()


def _say_once(vectorizer: Vectorizer, problem: str) -> None:
    """One warning per vectorizer and problem in this process (the rows retry
    every MODEL_RETRY_SECONDS; the log need not)."""
    level = logging.DEBUG if (vectorizer.id, problem) in _said else logging.WARNING
    _said.add((vectorizer.id, problem))
    log.log(
        level,
        "vectorizer %s: its rows wait (retried every %.0f s): %s",
        vectorizer.name,
        MODEL_RETRY_SECONDS,
        problem,
    )


def _row_outcomes(claimed: Claimed, result: Isolated) -> tuple[list[Outcome], dict[int, str]]:
    rows = claimed.to_embed
    return [
        Outcome(rows[i].seq, Action.WRITE, rows[i].text_hash, vector)
        for i, vector in result.vectors.items()
    ], result.errors


def _chunked_outcomes(
    claimed: Claimed, chunked: Chunked, result: Isolated, unfinished: set[int]
) -> tuple[list[Outcome], dict[int, str]]:
    """A row is written with all its chunks or not at all: one chunk that fails
    fails the row."""
    rows = claimed.to_embed
    outcomes: list[Outcome] = []
    errors = dict(claimed.errors)
    for i, inputs in enumerate(chunked.inputs_of()):
        if i in errors or i in unfinished:
            continue
        failed = next((result.errors[n] for n in inputs if n in result.errors), None)
        if failed is not None:
            errors[i] = failed
            continue
        vectors = np.stack([result.vectors[n] for n in inputs]) if inputs else None
        spans = chunked.spans[i]
        outcomes.append(Outcome(rows[i].seq, Action.WRITE, rows[i].text_hash, vectors, spans))
    return outcomes, errors


def run_batch(
    conn: psycopg.Connection[Any],
    queue: Queue,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    worker: str = "",
) -> BatchReport:
    """One batch, start to end, on one connection."""
    claimed = take_batch(conn, queue, encoder, limit=limit, lease_seconds=lease_seconds)
    if not claimed.seqs:
        return BatchReport()
    result = embed_batch(claimed, queue.vectorizer, encoder)
    report = store_batch(conn, queue, claimed, result, worker=worker)
    queue.end_claim(conn, claimed.claim)
    return report


def _checked(encoder: TextEncoder, vectorizer: Vectorizer) -> TextEncoder:
    if encoder.dimensions != vectorizer.dimensions:
        raise DimensionMismatch(
            f"model {encoder.name} gives {encoder.dimensions} dimensions; vectorizer"
            f" {vectorizer.name!r} stores {vectorizer.dimensions}"
        )
    return encoder


# The text a batch holds before this process has measured its rate (about
# 10 s of bge-base on two CPU cores, a fraction of a second on a GPU); also the
# slices of a long row when the caller gives no budget.
UNMEASURED_CHARACTERS = 50_000


def _slices_of(claimed: Claimed, max_characters: int | None) -> list[range] | None:
    """A chunked row alone in its claim whose chunks exceed one batch's work:
    its slices of chunks (None: embedded as a batch, as any other)."""
    chunked = claimed.chunked
    if chunked is None or len(claimed.to_embed) != 1 or claimed.errors:
        return None
    sizes = [end - start for start, end in chunked.spans[0]]
    parts = slices(sizes, max_characters or UNMEASURED_CHARACTERS)
    return parts if len(parts) > 1 else None


def _progress_key(claimed: Claimed, vectorizer: Vectorizer, encoder: TextEncoder) -> Any:
    (row,) = claimed.to_embed
    plan = (vectorizer.chunk_tokens, vectorizer.chunk_overlap, vectorizer.max_chunks)
    return (vectorizer.id, row.seq, row.text_hash, plan, encoder.name)


def embed_in_slices(
    claimed: Claimed,
    parts: Sequence[range],
    vectorizer: Vectorizer,
    encoder: TextEncoder,
    progress: RowProgress,
    deadline: float,
    abort_on: tuple[type[BaseException], ...] = (),
    clock: StageClock | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Isolated | None:
    """The embed stage of a long row alone in its claim, slice by slice, each
    kept in `progress` once done (a slice done in an earlier task is not done
    again). None: the deadline or `stop()` came first; the rest waits for a
    later task."""
    assert claimed.chunked is not None
    tokenized = claimed.chunked.tokenized
    done = 0
    for part in parts:
        todo = [i for i in part if i not in progress.vectors]
        if not todo:
            continue
        if done and time.monotonic() >= deadline:
            return None
        if done and stop():
            return None
        result = encode_isolating(
            lambda inputs: _checked(encoder, vectorizer).encode_tokenized(
                tokenized.subset(inputs), clock
            ),
            todo,
            abort_on=abort_on,
        )
        if result.systemic is not None:
            return result
        if result.errors:  # the row fails: one chunk that fails fails it
            errors = {todo[n]: error for n, error in result.errors.items()}
            return Isolated(dict(progress.vectors), errors)
        for n, vector in result.vectors.items():
            progress.vectors[todo[n]] = vector
        progress.tokens += result.tokens
        progress.padded_tokens += result.padded_tokens
        done += 1
    return Isolated(
        dict(progress.vectors), tokens=progress.tokens, padded_tokens=progress.padded_tokens
    )


TIMED_OUT = (
    "embedding this row alone met the worker's time limit: it takes longer than a task may"
    " run on this machine (raise ROWEMBED_TASK_SECONDS, or chunk the vectorizer)"
)


def drain(
    conn: psycopg.Connection[Any],
    reader: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    encoder: TextEncoder,
    *,
    limit: int,
    lease_seconds: float,
    time_budget: float,
    max_characters: int | None = None,
    worker: str = "",
    should_stop: Callable[[], bool] = lambda: False,
    abort_on: tuple[type[BaseException], ...] = (),
    clock: StageClock | None = None,
    progress: ChunkProgress | None = None,
) -> tuple[BatchReport, bool]:
    """Run batches until the queue is empty, the time budget is spent or
    `should_stop()`. Returns the summed report and whether work may remain.
    An `abort_on` exception from the model (a time limit) ends the drain at
    once, its claims given back, rather than being taken for a bad row.

    Three stages overlap: a thread claims, reads and tokenizes the next batch on
    `reader` while the model runs this one, and another writes the previous
    batch on `conn`. `should_stop` is asked between the slices of each batch
    (SLICES_PER_BATCH, whole rows of like lengths) and after each batch, on the
    claiming thread once its claim is complete (so it may use `reader`):
    stopping mid-batch writes the rows done and gives the rest back at once, as
    it does the next claim, so another table's live change waits for a slice,
    not a batch, and the rows wait for nobody.

    A chunked row with more chunks than a batch holds (`max_characters`) is
    embedded in slices kept in `progress`: when the time budget is spent or
    `should_stop()` between slices, or a time limit ends the task, it is given
    back without an attempt counted, and a later drain of this process goes on
    from where it stopped. Only an attempt that finished no slice counts.
    """
    queue = Queue(vectorizer)
    total = BatchReport()
    deadline = time.monotonic() + time_budget
    # Claims are taken on `reader`, which holds their tokens: the claiming thread
    # ends those of written batches before it claims again, the rest end here.
    held: list[Claim] = []
    written: list[Claim] = []

    def claim_batch() -> Claimed:
        _end_claims(reader, queue, held, written)
        claimed = take_batch(
            reader,
            queue,
            encoder,
            limit=limit,
            lease_seconds=lease_seconds,
            max_characters=max_characters,
            clock=clock,
        )
        held.append(claimed.claim)
        return claimed

    with (
        ThreadPoolExecutor(1, "rowembed-claim") as claiming,
        ThreadPoolExecutor(1, "rowembed-write") as writing,
    ):

        def stop_between() -> bool:
            # On the claiming thread, after any claim in flight: `reader` is its.
            return claiming.submit(should_stop).result()

        # What this session holds and has not written: given back if we stop or fail.
        batch: Claimed | None = None  # claimed, not yet handed to the writer
        upcoming: Future[Claimed] | None = None
        writes: tuple[Future[BatchReport], Claimed] | None = None
        timed_out: Claimed | None = None  # a row that met the time limit alone
        try:
            batch = claim_batch()
            more = batch.more_may_remain(limit)
            while batch.seqs:
                go_on = more and time.monotonic() < deadline
                # A suspect (its worker died with it before) is embedded with no
                # claim beside it: were it to kill this process again, no other
                # row would be counted for it.
                parts = _slices_of(batch, max_characters) if progress is not None else None
                alone = batch.claim.suspect
                if go_on and not alone:
                    upcoming = claiming.submit(claim_batch)
                row_progress: RowProgress | None = None
                chunks_before = 0
                try:
                    if parts is None:
                        result = embed_batch(
                            batch, vectorizer, encoder, abort_on, clock, stop=stop_between
                        )
                    else:
                        assert progress is not None
                        key = _progress_key(batch, vectorizer, encoder)
                        row_progress = progress.of(key)
                        chunks_before = len(row_progress.vectors)
                        result = embed_in_slices(
                            batch, parts, vectorizer, encoder, row_progress, deadline,
                            abort_on, clock, stop_between,
                        )  # fmt: skip
                        if result is None:  # the rest in a later task; nothing counted
                            more = True
                            break
                        progress.forget(key)
                except abort_on:
                    # Alone, the row is what outlasted the limit, unless a slice of it got done.
                    if len(batch.seqs) == 1 and not (
                        row_progress is not None and len(row_progress.vectors) > chunks_before
                    ):
                        timed_out = batch
                    raise
                # Stopped between slices: the rows done are written, the rest given back.
                unfinished = [batch.to_embed[i].seq for i in _unfinished(batch, result)]
                if unfinished:
                    release = Claim(unfinished, batch.claim.token)
                    claiming.submit(queue.release, reader, release).result()
                if writes is not None:
                    total.add(writes[0].result())
                    written.append(writes[1].claim)
                writes = (
                    writing.submit(
                        store_batch, conn, queue, batch, result, worker=worker, clock=clock
                    ),
                    batch,
                )
                batch = None
                if unfinished:
                    more = True
                    break
                if result.systemic is not None:  # the next batch would meet the same model
                    more = False
                    break
                if upcoming is None and go_on and alone:
                    upcoming = claiming.submit(claim_batch)
                if upcoming is None:
                    break
                batch, upcoming = upcoming.result(), None
                if not batch.seqs:
                    more = False
                    break
                if should_stop():
                    break
                more = batch.more_may_remain(limit)
            if writes is not None:
                total.add(writes[0].result())
                writes = None
        finally:
            _give_back(reader, queue, batch, upcoming, writes, timed_out)
            _end_claims(reader, queue, held, held[:])
    return total, more


def _end_claims(
    conn: psycopg.Connection[Any], queue: Queue, held: list[Claim], ending: list[Claim]
) -> None:
    """End the claims in `ending` (emptied), which `conn` holds, and forget them."""
    while ending:
        claim = ending.pop()
        held.remove(claim)
        if conn.broken:  # the session, and with it every token, is gone already
            continue
        try:
            queue.end_claim(conn, claim)
        except psycopg.Error:
            log.warning("could not end a claim; its lease will expire", exc_info=True)


def _give_back(
    conn: psycopg.Connection[Any],
    queue: Queue,
    batch: Claimed | None,
    upcoming: Future[Claimed] | None,
    writes: tuple[Future[BatchReport], Claimed] | None,
    timed_out: Claimed | None = None,
) -> None:
    """Release claims at once rather than after their lease: a batch claimed but
    not embedded (stopping), and, when something failed, the batches in flight.
    A row that met the time limit alone is recorded as failed instead (an
    attempt: backed off, parked after max_attempts); rows beside it never are."""
    if conn.broken:  # the session, and with it every claim, is gone already
        return
    unwritten = [batch] if batch is not None else []
    try:
        if upcoming is not None:
            unwritten.append(upcoming.result())
        if writes is not None:
            try:
                writes[0].result()
            except Exception:
                unwritten.append(writes[1])
        if timed_out is not None:
            queue.record_failures(conn, {timed_out.seqs[0]: TIMED_OUT})
            unwritten.remove(timed_out)
        for b in unwritten:
            queue.release(conn, b.claim)
    except Exception:
        log.warning("could not release claimed rows; their lease will expire", exc_info=True)
