"""Searches and live changes while a large backfill runs: neither waits behind it.

    python bench/under_backfill.py [--rows 20000] [--searches 100] [--updates 40] [--json]

One default `rowembed worker` (its embedding worker, its query worker and its
dispatcher, every setting at its default) with the bundled MiniLM on this
machine's CPUs; embedded PostgreSQL and Redis unless ROWEMBED_DATABASE_URL /
ROWEMBED_REDIS_URL are set. A small table (`bench_live`) is embedded first;
then a vectorizer is created on a table of `--rows` rows (`bench_backlog`),
and while its backfill runs: `--searches` `search_text` calls on bench_live,
each with a text never asked before (uncached: the loopback session, the
dispatcher, the query worker, the model), under the default timeout, and
`--updates` UPDATEs of bench_live rows, each timed from its commit to its new
embedding being stored. Reports timeouts, p50/p99 of both, and how much of the
backlog was left (the backfill must still be running for the figures to mean
anything).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from rowembed.dev.bench import drained, wait_for, worker_process
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.status import status
from rowembed.settings import Settings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
AFTER_SECONDS = 30
SEARCH = "SELECT (item).id FROM rowembed.search_text(NULL::bench_live, %s, 10)"
FRESH = "SELECT EXISTS (SELECT FROM {} WHERE id = %s AND text_hash = rowembed._text_hash(%s))"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_s": ordered[-1],
    }


def searches(database_url: str, texts: list[str], out: dict[str, Any]) -> None:
    latencies, failures = [], []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for text in texts:
            started = time.perf_counter()
            try:
                conn.execute(SEARCH, [text]).fetchall()
            except psycopg.Error as exc:
                failures.append(str(exc).strip().splitlines()[0])
                continue
            latencies.append(time.perf_counter() - started)
            time.sleep(0.1)
    out["latencies"], out["failures"] = latencies, failures


def updates(database_url: str, fresh: sql.Composed, keys: list[int], out: dict[str, Any]) -> None:
    latencies = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for n, key in enumerate(keys):
            body = f"an updated row {key}, version {n}: freshly written text about item {key}"
            conn.execute("UPDATE bench_live SET body = %s WHERE id = %s", [body, key])
            committed = time.perf_counter()
            wait_for(lambda k=key, b=body: _true(conn, fresh, [k, b]), timeout=120, interval=0.005)
            latencies.append(time.perf_counter() - committed)
            time.sleep(0.25)
    out["latencies"] = latencies


def _true(conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any]) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = [d.text for d in stdlib_docstrings(4000)]
    backlog = [f"{i}: {docs[i % len(docs)]}" for i in range(args.rows)]
    live = docs[:200]
    words = sorted({w for d in docs[:500] for w in d.split() if w.isalpha() and len(w) > 4})
    queries = [
        f"{words[i % len(words)]} {words[(7 * i + 3) % len(words)]} {i}"
        for i in range(args.searches)
    ]
    figures: dict[str, Any] = {"rows": args.rows, "cpus": os.cpu_count(), "model": MODEL}
    with (
        services(Settings.from_env()) as (database_url, redis_url),
        connect(database_url) as conn,
    ):
        migrate(conn)
        create_text_table(conn, "bench_live", live)
        create_text_table(conn, "bench_backlog", backlog)
        with worker_process(database_url, redis_url, {}):
            v = create_vectorizer(conn, "bench_live", ["body"], model=MODEL)
            wait_for(lambda: drained(conn, v), timeout=600, interval=0.1)
            fresh = sql.SQL(FRESH).format(v.destination)
            started = time.perf_counter()
            backfill = create_vectorizer(conn, "bench_backlog", ["body"], model=MODEL)
            time.sleep(5)  # the backfill under way
            searched: dict[str, Any] = {}
            updated: dict[str, Any] = {}
            threads = [
                threading.Thread(target=searches, args=(database_url, queries, searched)),
                threading.Thread(
                    target=updates, args=(database_url, fresh, list(range(args.updates)), updated)
                ),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            (left,) = status(conn, backfill.name)
            figures["backlog_left_after"] = left.pending
            figures["seconds_measured"] = time.perf_counter() - started
            figures["backfill_rows_per_s_while_probed"] = (args.rows - left.pending) / figures[
                "seconds_measured"
            ]
            time.sleep(AFTER_SECONDS)  # the backfill alone, for comparison
            (later,) = status(conn, backfill.name)
            figures["backfill_rows_per_s_alone"] = (left.pending - later.pending) / AFTER_SECONDS
    figures["search_text"] = {
        "calls": len(queries),
        "failed": len(searched["failures"]),
        "failures": sorted(set(searched["failures"])),
        **(percentiles(searched["latencies"]) if searched["latencies"] else {}),
    }
    figures["update_freshness"] = {"updates": args.updates, **percentiles(updated["latencies"])}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    s, u = figures["search_text"], figures["update_freshness"]
    print(f"during a {args.rows}-row backfill ({figures['cpus']} CPUs, {MODEL}, default worker):")
    print(
        f"  search_text, uncached: {s['calls']} calls, {s['failed']} failed;"
        f" p50 {s.get('p50_s', 0):.2f} s, p99 {s.get('p99_s', 0):.2f} s"
    )
    for failure in s["failures"]:
        print(f"    {failure}")
    print(
        f"  UPDATE freshness: {u['updates']} updates; p50 {u['p50_s']:.2f} s,"
        f" p99 {u['p99_s']:.2f} s, max {u['max_s']:.2f} s"
    )
    print(
        f"  backlog left after: {figures['backlog_left_after']} of {args.rows} rows"
        f" ({figures['seconds_measured']:.0f} s)"
    )
    print(
        f"  backfill: {figures['backfill_rows_per_s_while_probed']:.0f} rows/s while probed,"
        f" {figures['backfill_rows_per_s_alone']:.0f} rows/s alone after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
