"""A model change on a 20,000-row table while searches run.

    python bench/model_change.py [--rows 20000] [--json]

A table of short rows is embedded by a real `rowembed worker` (embedded
PostgreSQL and Redis unless ROWEMBED_DATABASE_URL / ROWEMBED_REDIS_URL are set)
with the bundled MiniLM; then `alter_vectorizer` rebuilds it with another model
of the same size (the same weights pooling the [CLS] token, a directory of its
own) and chunks, while a thread searches it (50 a second at most) and another
updates 20 rows a second. Prints: searches run during the rebuild, how many failed or returned fewer
than k rows, search latency p50/p99 before and during, the rebuild's time, the
switch's own time (the dispatcher logs it; measured here as the gap between the
last answer of the old model and the first of the new), and rows missing after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rowembed.dev.bench import cls_pooling_model, wait_for, worker_process
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import alter_vectorizer, connect, create_vectorizer, get_vectorizer, migrate
from rowembed.settings import Settings
from rowembed.workers.runtime import Encoder

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
K = 10


def count(conn: psycopg.Connection[Any], query: sql.Composable) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = [f"row {i} is about topic {i % 97} and item {i % 13}" for i in range(args.rows)]
    query = Encoder.load(MODEL, device="cpu").encode(["topic 3"]).vectors[0]
    figures: dict[str, Any] = {"rows": args.rows}
    with (
        tempfile.TemporaryDirectory() as tmp,
        services(Settings.from_env()) as (database_url, redis_url),
        worker_process(database_url, redis_url, {}),
        connect(database_url) as conn,
    ):
        new_model = cls_pooling_model(Path(tmp))
        migrate(conn)
        create_text_table(conn, "bench_model_change", texts)
        v = create_vectorizer(conn, "bench_model_change", ["body"], model=MODEL)
        started = time.perf_counter()
        wait_for(
            lambda: (
                count(conn, sql.SQL("SELECT count(*) FROM {}").format(v.destination)) == args.rows
            ),
            timeout=3600,
        )
        figures["first_embedding_seconds"] = time.perf_counter() - started

        samples: list[tuple[float, float, int, str]] = []  # (at, seconds, rows, model)
        failures: list[str] = []
        stop = threading.Event()
        search = sql.SQL(
            "SELECT count(*), (SELECT model FROM rowembed.vectorizer WHERE name = %s)"
            " FROM rowembed.search(NULL::bench_model_change, %s, %s, -1)"
        )

        def searching() -> None:
            with connect(database_url) as searcher:
                while not stop.is_set():
                    began = time.perf_counter()
                    try:
                        found, model = searcher.execute(search, [v.name, query, K]).fetchone()  # type: ignore[misc]
                    except psycopg.Error as exc:
                        failures.append(str(exc).strip())
                        continue
                    samples.append((began, time.perf_counter() - began, found, model))
                    time.sleep(0.02)  # a busy application, not a benchmark of search

        def updating() -> None:
            with connect(database_url) as writer:
                key = 0
                while not stop.is_set():
                    writer.execute(
                        "UPDATE bench_model_change SET body = body || '.' WHERE id = %s",
                        [key % args.rows],
                    )
                    key += 97
                    time.sleep(0.05)

        threads = [threading.Thread(target=searching), threading.Thread(target=updating)]
        for t in threads:
            t.start()
        time.sleep(3)
        altered_at = time.perf_counter()
        alter_vectorizer(
            conn,
            v.name,
            model=str(new_model),
            dimensions=384,
            chunking="tokens",
            chunk_tokens=16,
            chunk_overlap=2,
        )
        wait_for(lambda: get_vectorizer(conn, v.name).model == str(new_model), timeout=3600)
        figures["rebuild_seconds"] = time.perf_counter() - altered_at
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()

        before = [s for at, s, _, _ in samples if at < altered_at]
        during = [s for at, s, _, model in samples if at >= altered_at and model == MODEL]
        old_last = max(at + s for at, s, _, model in samples if model == MODEL)
        new_first = min(at for at, _, _, model in samples if model == str(new_model))
        figures.update(
            searches_during_rebuild=len(during),
            searches_failed=len(failures),
            searches_short_of_k=sum(found < K for _, _, found, _ in samples),
            search_p50_ms_before=1000 * statistics.median(before),
            search_p99_ms_before=1000 * percentile(before, 99),
            search_p50_ms_during=1000 * statistics.median(during),
            search_p99_ms_during=1000 * percentile(during, 99),
            gap_between_models_ms=1000 * max(0.0, new_first - old_last),
            rows_missing_after=args.rows
            - count(conn, sql.SQL("SELECT count(DISTINCT id) FROM {}").format(v.destination)),
        )
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
