"""Latency of rowembed.search_text from a plain SQL connection, uncached and cached.

    python bench/search_text_latency.py [--rows 2000] [--queries 40] [--json]

The bundled MiniLM, standard-library docstrings as the table, one warm
`rowembed worker --concurrency 1` (with its dispatcher) on this machine;
embedded PostgreSQL and Redis unless ROWEMBED_DATABASE_URL / ROWEMBED_REDIS_URL
are set. Each query is a docstring's qualified name, asked once (uncached: the
loopback session, the dispatcher, the query queue, the model, the cache, the
search) and then again (cached: a lookup and the search); also the cached query
vector alone (rowembed.embed_query). p50 and p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import psycopg

from rowembed.dev.bench import drained, drop_if_exists, wait_for, worker_process
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.settings import Settings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def timed_ms(conn: psycopg.Connection[Any], statement: str, params: list[Any]) -> float:
    started = time.perf_counter()
    conn.execute(statement, params).fetchall()
    return 1000 * (time.perf_counter() - started)


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = stdlib_docstrings(args.rows)
    queries = [d.qualname.replace("_", " ").replace(".", " ") for d in docs[: args.queries]]
    search = "SELECT (item).id, similarity FROM rowembed.search_text(NULL::bench_text, %s, 10)"
    embed = "SELECT rowembed.embed_query('bench_text', %s)"
    with (
        services(Settings.from_env()) as (database_url, redis_url),
        connect(database_url) as conn,
    ):
        migrate(conn)
        drop_if_exists(conn, "bench_text")
        create_text_table(conn, "bench_text", [d.text for d in docs])
        with worker_process(database_url, redis_url, {"ROWEMBED_DEVICE": "cpu"}):
            v = create_vectorizer(conn, "bench_text", ["body"], model=MODEL)
            wait_for(lambda: drained(conn, v), timeout=1800, interval=0.1)
            conn.execute("DELETE FROM rowembed.query_cache")
            with psycopg.connect(database_url, autocommit=True) as plain:
                timed_ms(plain, search, ["warm up the worker's model"])
                uncached = [timed_ms(plain, search, [q]) for q in queries]
                cached = [timed_ms(plain, search, [q]) for q in queries]
                vector_only = [timed_ms(plain, embed, [q]) for q in queries]
    figures = {
        "rows": args.rows,
        "queries": len(queries),
        "uncached": summary(uncached),
        "cached": summary(cached),
        "cached_query_vector_only": summary(vector_only),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"search_text over {args.rows} rows, {len(queries)} queries, one CPU worker")
    for name in ("uncached", "cached", "cached_query_vector_only"):
        f = figures[name]
        print(f"  {name:<26} p50 {f['p50_ms']:7.1f} ms   p95 {f['p95_ms']:7.1f} ms")  # type: ignore[index]


if __name__ == "__main__":
    main()
