"""`rowembed bench`: throughput, database path, trigger cost and freshness.

Everything runs in one process against the same servers (embedded unless
ROWEMBED_DATABASE_URL / ROWEMBED_REDIS_URL are set), so ratios hold on a noisy
machine. Figures are printed as a table, or as JSON with --json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import (
    create_text_table,
    insert_statement,
    update_statement,
)
from rowembed.pgplugin import connect, create_vectorizer, drop_vectorizer, migrate
from rowembed.pgplugin.backfill import step_backfill
from rowembed.pgplugin.indexes import build_index
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import Vectorizer, has_embedding
from rowembed.settings import Settings
from rowembed.workers.pipeline import drain
from rowembed.workers.runtime import Encoded, Tokenized

Conn = psycopg.Connection[Any]


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> None:
    """Poll `predicate` until it is true; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark step did not finish within {timeout:.0f} s")
        time.sleep(interval)


def drained(conn: Conn, v: Vectorizer) -> bool:
    """Whether `v`'s queue is empty (but for parked rows): cheap, for polling."""
    return Queue(v).is_drained(conn)


def drop_if_exists(conn: Conn, name: str) -> None:
    with contextlib.suppress(psycopg.Error):
        drop_vectorizer(conn, name)


def cls_pooling_model(directory: Path) -> Path:
    """A second encoder of the same size, offline: the bundled MiniLM copied
    into `directory`, pooling its [CLS] token (other vectors, same dimensions)."""
    from rowembed.workers.runtime.models import bundled_model_path

    target = directory / "minilm-cls"
    shutil.copytree(bundled_model_path("sentence-transformers/all-MiniLM-L6-v2"), target)
    pooling = target / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))
    return target


@contextlib.contextmanager
def worker_process(
    database_url: str, redis_url: str, env: dict[str, str], stdout: Any = None
) -> Iterator[None]:
    """`rowembed worker` (and its dispatcher) for the length of the block;
    `stdout`: where its banner and logs go (inherited when None)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rowembed", "--loglevel", "WARNING", "worker"],
        env={
            **os.environ,
            "ROWEMBED_DATABASE_URL": database_url,
            "ROWEMBED_REDIS_URL": redis_url,
            **env,
        },
        stdout=stdout,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(60)


class Precomputed:
    """Stands in for the model when the database path is measured: the text of
    row i is "i", and its vector is vectors[i % len(vectors)]."""

    name = "precomputed"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.dimensions = vectors.shape[1]

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return Tokenized(list(texts), [[]] * len(texts), [False] * len(texts))

    def encode_tokenized(self, tokenized: Tokenized, clock: Any = None) -> Encoded:
        return self.encode(tokenized.texts)

    def encode(self, texts: Sequence[str]) -> Encoded:
        rows = self.vectors[[int(t) % len(self.vectors) for t in texts]]
        return Encoded(rows, 0, len(texts), len(texts))


def database_path(
    conn: Conn, database_url: str, rows: int, dimensions: int, *, deferred: bool
) -> dict[str, float]:
    """One worker's claim, read and write path (the overlapped pipeline, two
    sessions) with precomputed vectors, rows/s; with the index deferred as a
    large backfill defers it, also the time to build it afterwards."""
    name = f"bench_db_{'deferred' if deferred else 'live'}"
    pool = np.random.default_rng(0).normal(size=(1024, dimensions)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    drop_if_exists(conn, name)
    create_text_table(conn, name, [str(i) for i in range(rows)])
    v = create_vectorizer(
        conn,
        name,
        ["body"],
        model="bench",
        dimensions=dimensions,
        defer_index_above=0 if deferred else None,
    )
    while step_backfill(conn, v.id, 10_000):
        pass  # queue every row first, as the dispatcher would
    assert v.index_state == ("deferred" if deferred else "built")
    with connect(database_url) as reader:
        started = time.perf_counter()
        report, _ = drain(
            conn,
            reader,
            v,
            Precomputed(pool),
            limit=1000,
            lease_seconds=300,
            time_budget=3600,
        )
        seconds = time.perf_counter() - started
    if report.written != rows:
        raise RuntimeError(f"database path wrote {report.written} of {rows} rows")
    figures = {"rows_per_s": rows / seconds}
    if deferred:
        build = build_index(conn, name, memory="1GB", parallel_workers=2)
        assert build is not None
        figures["index_build_s"] = build
        figures["rows_per_s_with_build"] = rows / (seconds + build)
    return figures


def trigger_cost(conn: Conn, n: int, rounds: int = 5) -> dict[str, float]:
    """Microseconds per single-row INSERT and UPDATE, without and with the trigger;
    rounds alternate between the two tables and the ratio is their median."""
    tables = {}
    for label in ("plain", "vectorized"):
        name = f"bench_writes_{label}"
        drop_if_exists(conn, name)
        create_text_table(conn, name, [])
        if label == "vectorized":
            create_vectorizer(conn, name, ["body"], model="bench", dimensions=8)
        tables[label] = name
    per_round = n // rounds
    timings: dict[str, list[float]] = {}
    for r in range(rounds):
        keys = range(r * per_round, (r + 1) * per_round)
        for label, table in tables.items():
            for op, statement in (
                ("insert", insert_statement("public", table)),
                ("update", update_statement("public", table)),
            ):
                started = time.perf_counter()
                for i in keys:
                    conn.execute(statement, [i, f"text {i}"] if op == "insert" else [f"new {i}", i])
                timings.setdefault(f"{op}_{label}", []).append(
                    (time.perf_counter() - started) / per_round
                )
    figures = {}
    for op in ("insert", "update"):
        plain, vectorized = timings[f"{op}_plain"], timings[f"{op}_vectorized"]
        figures[f"{op}_us"] = statistics.median(plain) * 1e6
        figures[f"{op}_with_trigger_us"] = statistics.median(vectorized) * 1e6
        figures[f"{op}_ratio"] = statistics.median(
            v / p for v, p in zip(vectorized, plain, strict=True)
        )
    return figures


def freshness(conn: Conn, v: Vectorizer, samples: int, first_id: int) -> dict[str, float]:
    """Seconds from a committed INSERT to its embedding being in the index."""
    insert = insert_statement(v.source_schema, v.source_table)
    latencies = []
    for i in range(first_id, first_id + samples):
        conn.execute(insert, [i, f"freshness probe {i}: a new row"])
        committed = time.perf_counter()
        wait_for(lambda i=i: has_embedding(conn, v, {"id": i}), timeout=120, interval=0.005)
        latencies.append(time.perf_counter() - committed)
        time.sleep(0.2)
    latencies.sort()
    return {
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def run_bench(settings: Settings, rows: int, model: str, quick: bool) -> dict[str, Any]:
    from rowembed.workers.runtime import Encoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [d.qualname + "\n" + d.text for d in stdlib_docstrings(rows)]
    figures: dict[str, Any] = {
        "rows": len(texts),
        "model": model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    with services(settings) as (database_url, redis_url), connect(database_url) as conn:
        migrate(conn)
        encoder = Encoder.load(model, device=settings.device)
        figures["device"] = str(encoder.device)
        encoder.encode(texts[:32])  # warm-up

        def forward() -> float:
            started = time.perf_counter()
            encoded = encoder.encode(texts)
            figures["padding_overhead"] = encoded.padded_tokens / encoded.tokens - 1
            return len(texts) / (time.perf_counter() - started)

        forward_before = forward()

        env = {
            "ROWEMBED_SWEEP_SECONDS": "0.5",
            "ROWEMBED_TASK_SECONDS": "5",
            "ROWEMBED_DEVICE": settings.device,
        }
        with worker_process(database_url, redis_url, env):
            create_text_table(conn, "bench_warmup", texts[:16])
            warm = create_vectorizer(conn, "bench_warmup", ["body"], model=model)
            wait_for(lambda: drained(conn, warm), timeout=300)

            create_text_table(conn, "bench_e2e", texts)
            started = time.perf_counter()
            v = create_vectorizer(conn, "bench_e2e", ["body"], model=model)
            wait_for(lambda: drained(conn, v), timeout=3600)
            figures["end_to_end_rows_per_s"] = len(texts) / (time.perf_counter() - started)

            samples = 5 if quick else 20
            figures["freshness_idle"] = freshness(conn, v, samples, 1_000_000)
            create_text_table(conn, "bench_backlog", texts * (1 if quick else 2))
            backlog = create_vectorizer(conn, "bench_backlog", ["body"], model=model)
            figures["freshness_during_backfill"] = freshness(conn, v, samples, 2_000_000)
            (left,) = status(conn, backlog.name)
            figures["backlog_left_after_freshness"] = left.pending
            drop_vectorizer(conn, backlog.name)

        # The baseline brackets the end-to-end run: the mean of a run before and after.
        figures["forward_rows_per_s"] = (forward_before + forward()) / 2
        figures["end_to_end_ratio"] = (
            figures["end_to_end_rows_per_s"] / figures["forward_rows_per_s"]
        )
        figures["db_path_deferred_index"] = database_path(
            conn, database_url, 5_000 if quick else 20_000, 768, deferred=True
        )
        figures["db_path_live_hnsw"] = database_path(
            conn, database_url, 1_000 if quick else 5_000, 768, deferred=False
        )
        figures["trigger"] = trigger_cost(conn, 500 if quick else 2000)
    return figures


def print_table(figures: dict[str, Any]) -> None:
    print(
        f"rowembed bench: {figures['rows']} rows, {figures['model']} on {figures['device']}"
        f" ({figures['machine']})"
    )
    lines = [
        (
            "1. model forward (tokenize + forward)",
            f"{figures['forward_rows_per_s']:.1f} rows/s",
            f"padding +{figures['padding_overhead']:.0%}",
        ),
        (
            "2. end to end through a worker",
            f"{figures['end_to_end_rows_per_s']:.1f} rows/s",
            f"ratio to (1) {figures['end_to_end_ratio']:.2f}",
        ),
        (
            "3. database path, 768 dims, index deferred",
            f"{figures['db_path_deferred_index']['rows_per_s']:.0f} rows/s",
            f"one worker; HNSW built after in"
            f" {figures['db_path_deferred_index']['index_build_s']:.1f} s:"
            f" {figures['db_path_deferred_index']['rows_per_s_with_build']:.0f} rows/s in all",
        ),
        (
            "   database path, live HNSW index",
            f"{figures['db_path_live_hnsw']['rows_per_s']:.0f} rows/s",
            "one worker",
        ),
        (
            "4. single-row INSERT, trigger cost",
            f"{figures['trigger']['insert_ratio']:.2f}x",
            f"{figures['trigger']['insert_us']:.0f} -> "
            f"{figures['trigger']['insert_with_trigger_us']:.0f} us",
        ),
        (
            "   single-row UPDATE, trigger cost",
            f"{figures['trigger']['update_ratio']:.2f}x",
            f"{figures['trigger']['update_us']:.0f} -> "
            f"{figures['trigger']['update_with_trigger_us']:.0f} us",
        ),
        (
            "5. freshness, idle",
            f"p50 {figures['freshness_idle']['p50_s']:.2f} s",
            f"p99 {figures['freshness_idle']['p99_s']:.2f} s",
        ),
        (
            "   freshness, during a backfill",
            f"p50 {figures['freshness_during_backfill']['p50_s']:.2f} s",
            f"p99 {figures['freshness_during_backfill']['p99_s']:.2f} s"
            f" ({figures['backlog_left_after_freshness']} backlog rows left)",
        ),
    ]
    for label, value, note in lines:
        print(f"{label:<40} {value:>16}  {note}")


def main(settings: Settings, rows: int, model: str, as_json: bool, quick: bool) -> int:
    figures = run_bench(settings, rows, model, quick)
    if as_json:
        print(json.dumps(figures))
    else:
        print_table(figures)
    return 0
