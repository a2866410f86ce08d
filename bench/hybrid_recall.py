"""Hybrid search against its two legs, on queries where a keyword matters.

    python bench/hybrid_recall.py [--rows 3000] [--queries 100] [--json]

The table: standard-library docstrings, embedded by the bundled MiniLM through a
real `rowembed worker` (embedded PostgreSQL and Redis unless ROWEMBED_DATABASE_URL
/ ROWEMBED_REDIS_URL are set), with `enable_text_search(..., 'english')`. Each
query is made from one docstring: a rare identifier-like word of it (with an
underscore, a digit or inner capitals, in at most three docstrings) and the two
longest other words of its first line. The answer is that docstring: hit@10 (in
the top ten) and MRR@10 for the vector leg (`search_text`, no threshold), the
full text leg alone (the GIN-indexed document, `websearch_to_tsquery`,
`ts_rank_cd`) and
`hybrid_search` (no threshold, defaults otherwise).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
from typing import Any

import psycopg
from psycopg import sql

from rowembed.dev.bench import drained, drop_if_exists, wait_for, worker_process
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.settings import Settings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IDENTIFIER = re.compile(r"^(?=.*[_0-9]|.*[a-z][A-Z])[A-Za-z_][A-Za-z0-9_]{4,}$")


def keyword_queries(texts: list[str], count: int) -> list[tuple[int, str]]:
    """(answer row, query) pairs: a rare identifier-like word and two other words."""
    words = [set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", t)) for t in texts]
    frequency = collections.Counter(w for ws in words for w in ws)
    rng, queries = random.Random(0), []
    for row in rng.sample(range(len(texts)), len(texts)):
        rare = sorted(w for w in words[row] if IDENTIFIER.match(w) and frequency[w] <= 3)
        first_line = re.findall(r"[A-Za-z]{4,}", texts[row].splitlines()[0])
        others = sorted(set(first_line) - set(rare), key=len, reverse=True)[:2]
        if rare and len(others) == 2:
            queries.append((row, " ".join([rng.choice(rare), *others])))
        if len(queries) == count:
            break
    return queries


def scores(ranked: list[list[int]], answers: list[int]) -> dict[str, float]:
    hits = [answer in top for top, answer in zip(ranked, answers, strict=True)]
    mrr = [
        1 / (top.index(answer) + 1) if answer in top else 0.0
        for top, answer in zip(ranked, answers, strict=True)
    ]
    return {"hit_at_10": sum(hits) / len(hits), "mrr_at_10": sum(mrr) / len(mrr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [d.text for d in stdlib_docstrings(args.rows)]
    queries = keyword_queries(texts, args.queries)
    answers = [row for row, _ in queries]
    t = sql.Identifier("bench_hybrid")
    legs: dict[str, Any] = {
        "vector": sql.SQL(
            "SELECT (item).id FROM rowembed.search_text(NULL::{}, %s, 10, -1)"
        ).format(t),
        "text": None,  # composed below, once the document function exists
        "hybrid": sql.SQL(
            "SELECT (item).id FROM rowembed.hybrid_search(NULL::{}, %s, 10, min_similarity => -1)"
        ).format(t),
    }
    with (
        services(Settings.from_env()) as (database_url, redis_url),
        connect(database_url) as conn,
    ):
        migrate(conn)
        drop_if_exists(conn, "bench_hybrid")
        create_text_table(conn, "bench_hybrid", texts)
        with worker_process(database_url, redis_url, {"ROWEMBED_DEVICE": "cpu"}):
            v = create_vectorizer(conn, "bench_hybrid", ["body"], model=MODEL)
            conn.execute("SELECT rowembed.enable_text_search(%s, 'english')", [v.name])
            document = sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_document")
            legs["text"] = sql.SQL(
                "SELECT id FROM {t} AS b, websearch_to_tsquery('english', %s) AS q"
                " WHERE {d}(b.body) @@ q ORDER BY ts_rank_cd({d}(b.body), q) DESC LIMIT 10"
            ).format(t=t, d=document)
            wait_for(lambda: drained(conn, v), timeout=1800, interval=0.1)
            with psycopg.connect(database_url, autocommit=True) as plain:
                ranked = {
                    name: [[r[0] for r in plain.execute(statement, [q])] for _, q in queries]
                    for name, statement in legs.items()
                }
    figures = {
        "rows": len(texts),
        "queries": len(queries),
        "example_query": queries[0][1],
        **{name: scores(r, answers) for name, r in ranked.items()},
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{len(texts)} docstrings, {len(queries)} keyword queries (e.g. {queries[0][1]!r})")
    for name in legs:
        f = figures[name]
        print(f"  {name:<7} hit@10 {f['hit_at_10']:.3f}   MRR@10 {f['mrr_at_10']:.3f}")  # type: ignore[index]


if __name__ == "__main__":
    main()
