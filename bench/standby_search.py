"""Search throughput against the primary alone, and against primary + hot standby.

    python bench/standby_search.py [--rows 20000] [--clients 8] [--seconds 10] [--json]

An embedded PostgreSQL and a streaming standby of it (pg_basebackup -R), on
this machine. A table of `--rows` rows with random 384-dimension vectors
(precomputed: the database path, no model) and its HNSW index; `--clients`
threads each run `rowembed.search(..., 10)` with random query vectors for
`--seconds`: first all against the primary, then half against each server.
Queries per second of each, in the same run. On one machine the two servers
share its CPUs: the figure that matters is what a standby on its own machine
adds, which this machine cannot show; the bench proves the standby serves the
same searches, and what it costs to route them there.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from rowembed.dev.bench import Precomputed
from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.backfill import step_backfill
from rowembed.workers.pipeline import drain

DIMENSIONS = 384
SEARCH = sql.SQL("SELECT (item).id FROM rowembed.search(NULL::bench_standby, %s, 10)")


def load(conn: psycopg.Connection[Any], url: str, rows: int) -> None:
    pool = np.random.default_rng(0).normal(size=(4096, DIMENSIONS)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    create_text_table(conn, "bench_standby", [str(i) for i in range(rows)])
    v = create_vectorizer(conn, "bench_standby", ["body"], model="bench", dimensions=DIMENSIONS)
    while step_backfill(conn, v.id, 10_000):
        pass
    with connect(url) as reader:
        drain(conn, reader, v, Precomputed(pool), limit=2000, lease_seconds=600,
              time_budget=3600)  # fmt: skip


def clients(urls: list[str], count: int, seconds: float) -> float:
    """Queries per second of `count` threads, spread over `urls` in turn."""
    done = [0] * count
    stop = time.monotonic() + seconds

    def run(n: int) -> None:
        rng = np.random.default_rng(n)
        with connect(urls[n % len(urls)]) as conn:
            while time.monotonic() < stop:
                query = rng.normal(size=DIMENSIONS).astype(np.float32)
                conn.execute(SEARCH, [query]).fetchall()
                done[n] += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    primary = EmbeddedPostgres().start()
    standby = None
    try:
        with connect(primary.url) as conn:
            migrate(conn)
            load(conn, primary.url, args.rows)
            standby = primary.standby()
            (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
            with connect(standby.url) as replica:
                while not replica.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]
                ).fetchone()[0]:  # type: ignore[index]
                    time.sleep(0.1)
        clients([primary.url, standby.url], args.clients, 2)  # warm both caches
        figures = {
            "rows": args.rows,
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "primary_alone_qps": clients([primary.url], args.clients, args.seconds),
            "primary_and_standby_qps": clients(
                [primary.url, standby.url], args.clients, args.seconds
            ),
        }
        figures["ratio"] = figures["primary_and_standby_qps"] / figures["primary_alone_qps"]
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"rowembed.search, {args.rows} rows x {DIMENSIONS} dims (HNSW), {args.clients} clients,"
            f" {figures['cpus']} CPUs:\n"
            f"  primary alone:       {figures['primary_alone_qps']:8.1f} queries/s\n"
            f"  primary + standby:   {figures['primary_and_standby_qps']:8.1f} queries/s"
            f"  (ratio {figures['ratio']:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
