"""Storage and index choices, measured: write rate with a live index and with the
index deferred, index build time, size, search latency and recall@10.

    python bench/storage_recall.py [--rows 20000] [--queries 200] [--dimensions 768]
                                   [--model NAME] [--json]

Vectors are synthetic (unit vectors around 100 cluster centres, as in the design
brief's database ceilings; queries from the same distribution), or with --model
real embeddings of standard-library docstrings (queries: other docstrings,
embedded with the model). Recall is against the exact top-10 by cosine,
computed in numpy. Rows go through the worker's
own write path (claim, read, binary COPY into a staging table, guarded write)
with the model replaced by the precomputed vectors. Uses ROWEMBED_DATABASE_URL,
else an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg

from rowembed.dev.bench import Precomputed, drop_if_exists
from rowembed.dev.sample_tables import create_text_table, drop_table, insert_texts
from rowembed.pgplugin import connect, create_vectorizer, drop_vectorizer, migrate
from rowembed.pgplugin.indexes import build_index, defer_index
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.search import search_vector, set_rescore_factor
from rowembed.pgplugin.status import destination_size
from rowembed.settings import Settings
from rowembed.workers.pipeline import run_batch

CHOICES = [("vector", "hnsw"), ("halfvec", "hnsw"), ("vector", "hnsw_binary"),
           ("halfvec", "hnsw_binary")]  # fmt: skip
RESCORE_FACTORS = (10, 25, 40)  # 40: the default
# rowembed.ef_search for the hnsw rows (--widths): pgvector's default width
# (40), and rowembed's own (None)
WIDTHS: tuple[int | None, ...] = (40, None)
LIVE_ROWS = 2000


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embedded(model: str, rows: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    import os

    from rowembed.dev.corpus import stdlib_docstrings
    from rowembed.workers.runtime import Encoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The standard library has about 3,200 docstrings; for more rows, their
    # sentences of at least 40 characters (about 9,800) are the rows.
    docs = stdlib_docstrings(rows + queries)
    texts = [d.qualname + "\n" + d.text for d in docs]
    if len(texts) < rows + queries:
        sentences = (re.split(r"(?<=[.!?])\s+", " ".join(d.text.split())) for d in docs)
        texts = list(dict.fromkeys(s for group in sentences for s in group if len(s) >= 40))
    texts = texts[: rows + queries]
    vectors = Encoder.load(model).encode(texts).vectors
    return vectors[queries:], vectors[:queries]


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = Settings.from_env().database_url
    if url:
        yield url
        return
    from rowembed.dev.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres()
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()
        pg.remove()


def measure(
    conn: psycopg.Connection[Any],
    storage: str,
    method: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    widths: tuple[int | None, ...] = WIDTHS,
) -> dict[str, Any]:
    name = f"bench_{storage}_{method}"
    drop_if_exists(conn, name)
    create_text_table(conn, name, [])
    v = create_vectorizer(
        conn, name, ["body"], model="precomputed", dimensions=vectors.shape[1],
        storage=storage, index_method=method, backfill=False, defer_index_above=None,
    )  # fmt: skip
    insert_texts(conn, name, [str(i) for i in range(len(vectors))])
    queue, model = Queue(v), Precomputed(vectors)

    def write(limit: int) -> float:
        started, done = time.perf_counter(), 0
        while done < limit:
            claimed = run_batch(conn, queue, model, limit=256, lease_seconds=300).claimed
            if not claimed:
                break
            done += claimed
        return done / (time.perf_counter() - started)

    live_rate = write(LIVE_ROWS)
    defer_index(conn, name)
    deferred_rate = write(len(vectors))
    build_seconds = build_index(conn, name, memory="1GB", parallel_workers=2)
    assert build_seconds is not None
    size, index_size = destination_size(conn, name)
    result: dict[str, Any] = {
        "storage": storage,
        "index": method,
        "live_index_rows_per_s": live_rate,
        "deferred_rows_per_s": deferred_rate,
        "build_seconds": build_seconds,
        "table_mb": size / 2**20,
        "index_mb": index_size / 2**20,
        "search": {},
    }
    widths = widths if method == "hnsw" else (None,)
    for factor, width in [(f, w) for f in (RESCORE_FACTORS if method == "hnsw_binary" else (None,))
                          for w in widths]:  # fmt: skip
        if factor is not None:
            set_rescore_factor(conn, factor)
        conn.execute("SELECT set_config('rowembed.ef_search', %s, false)", [str(width or "")])
        latencies, recalls = [], []
        for query, truth in zip(queries, exact, strict=True):
            started = time.perf_counter()
            ids = [h.row["id"] for h in search_vector(conn, v, query, k=10, min_similarity=-1)]
            latencies.append(time.perf_counter() - started)
            recalls.append(len(set(ids) & set(truth.tolist())) / len(truth))
        label = f"rescore x{factor}" if factor else "direct"
        label += f", ef_search {width}" if width else ""
        result["search"][label] = {
            "recall_at_10": statistics.fmean(recalls),
            "p50_ms": 1000 * statistics.median(latencies),
        }
    set_rescore_factor(conn, None)
    conn.execute("SELECT set_config('rowembed.ef_search', '', false)")
    drop_vectorizer(conn, name)
    drop_table(conn, name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dimensions", type=int, default=768)
    parser.add_argument("--model", help="embed docstrings with this model instead")
    parser.add_argument(
        "--widths", default="40,default", help="rowembed.ef_search values for hnsw (default: ours)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.model:
        vectors, queries = embedded(args.model, args.rows, args.queries)
        source = f"{args.model} embeddings of docstrings"
    else:
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(100, args.dimensions))
        vectors = clustered(rng, args.rows, centres)
        queries = clustered(rng, args.queries, centres)
        source = "synthetic clustered vectors"
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    with database() as url, connect(url) as conn:
        migrate(conn)
        widths = tuple(None if w == "default" else int(w) for w in args.widths.split(","))
        results = [measure(conn, s, m, vectors, queries, exact, widths) for s, m in CHOICES]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{len(vectors)} rows x {vectors.shape[1]} dims ({source}), {len(queries)} queries")
    print(f"{'storage':<8} {'index':<12} {'live rows/s':>11} {'deferred':>9} {'build s':>8}"
          f" {'table MB':>8} {'index MB':>8}  search")  # fmt: skip
    for r in results:
        searches = "; ".join(
            f"{k}: recall {s['recall_at_10']:.3f}, p50 {s['p50_ms']:.1f} ms"
            for k, s in r["search"].items()
        )
        print(
            f"{r['storage']:<8} {r['index']:<12} {r['live_index_rows_per_s']:>11.0f}"
            f" {r['deferred_rows_per_s']:>9.0f} {r['build_seconds']:>8.1f}"
            f" {r['table_mb']:>8.1f} {r['index_mb']:>8.1f}  {searches}"
        )


if __name__ == "__main__":
    main()
