"""How long one claim takes beside a long queue: `python bench/claim_latency.py`.

Fills a vectorizer's queue with --rows backfill entries (embedded PostgreSQL
unless ROWEMBED_DATABASE_URL is set), then times --claims claims of --claim-rows
rows (each given back), and prints the median and the maximum.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rowembed.dev.bench import drop_if_exists
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.backfill import start_backfill, step_backfill
from rowembed.pgplugin.queue import Queue
from rowembed.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--claim-rows", type=int, default=512)
    args = parser.parse_args()
    with services(Settings.from_env()) as (database_url, _), connect(database_url) as conn:
        migrate(conn)
        drop_if_exists(conn, "bench_claims")
        create_text_table(conn, "bench_claims", [f"text {i}" for i in range(args.rows)])
        v = create_vectorizer(
            conn, "bench_claims", ["body"], model="m", dimensions=3, backfill=False
        )
        start_backfill(conn, v.name)
        while step_backfill(conn, v.id, 50_000):
            pass
        queue, seconds = Queue(v), []
        for _ in range(args.claims):
            started = time.perf_counter()
            claim = queue.claim(conn, args.claim_rows, 60)
            seconds.append(time.perf_counter() - started)
            queue.release(conn, claim)
            queue.end_claim(conn, claim)
        print(
            f"queue of {args.rows} rows, claims of {args.claim_rows}:"
            f" median {1000 * statistics.median(seconds):.1f} ms, max {1000 * max(seconds):.1f} ms"
        )


if __name__ == "__main__":
    main()
