"""How many right answers a similarity threshold hides, whole rows against chunks.

    python bench/thresholds.py [--rows 2000] [--queries 200] [--json]

Standard-library docstrings (the longest `--rows` of them, so that many are
chunked into several pieces), embedded by the bundled MiniLM in this process
into two vectorizers of the same text: whole rows (truncated at the model's 256
tokens) and chunks (`chunking => 'tokens'`, the defaults). Two kinds of query,
each made from one docstring, whose answer is that docstring: `summary` (its
first line, a description) and `keyword` (a rare identifier-like word of it and
two words of its first line, as bench/hybrid_recall.py). For each vectorizer and
query kind: hit@10 with no threshold, the answer's similarity (p1, p10, p50),
and for each threshold the share of those hits it hides and the share of random
rows (50 per query) it lets through: the default (0.3 for this
model), what `rowembed calibrate` suggests from the table's own rows, and from
the queries. Embedded PostgreSQL unless ROWEMBED_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
from hybrid_recall import keyword_queries
from psycopg import sql

from rowembed.dev.bench import drop_if_exists
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.search import similarity_profile, suggest_min_similarity
from rowembed.settings import Settings
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def summary_queries(texts: list[str], count: int) -> list[tuple[int, str]]:
    """(answer row, its first line) for rows whose first line says something."""
    found = [(row, t.splitlines()[0].strip()) for row, t in enumerate(texts)]
    return [(row, line) for row, line in found if len(line.split()) >= 4][:count]


def answers_found(conn: Any, table: str, vectors: np.ndarray, answers: list[int]) -> list[float]:
    """The answer's similarity where it is in the top ten (no threshold), else NaN."""
    statement = sql.SQL(
        "SELECT (item).id, similarity FROM rowembed.search(NULL::{}, %s, 10, -1)"
    ).format(sql.Identifier(table))
    found = []
    for vector, answer in zip(vectors, answers, strict=True):
        top = dict(conn.execute(statement, [vector]).fetchall())
        found.append(float(top.get(answer, float("nan"))))
    return found


def random_similarities(conn: Any, destination: sql.Identifier, vectors: np.ndarray) -> np.ndarray:
    """Each query's similarity to 50 random embeddings: the noise a threshold must keep out."""
    statement = sql.SQL(
        "SELECT 1 - (embedding <=> %s) FROM {} ORDER BY md5(id::text || %s) LIMIT 50"
    ).format(destination)
    return np.array(
        [r[0] for n, q in enumerate(vectors) for r in conn.execute(statement, [q, str(n)])]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = sorted(stdlib_docstrings(4 * args.rows), key=lambda d: -len(d.text))[: args.rows]
    texts = [d.text for d in docs]
    encoder = Encoder.load(MODEL, device="cpu")
    query_sets = {
        "summary": summary_queries(texts, args.queries),
        "keyword": keyword_queries(texts, args.queries),
    }
    figures: dict[str, Any] = {"rows": len(texts), "queries": {}}
    with services(Settings.from_env()) as (database_url, _), connect(database_url) as conn:
        migrate(conn)
        for chunking in ("none", "tokens"):
            table = f"bench_thresholds_{chunking}"
            drop_if_exists(conn, table)
            create_text_table(conn, table, texts)
            v = create_vectorizer(conn, table, ["body"], model=MODEL, chunking=chunking)
            while run_batch(conn, Queue(v), encoder, limit=128, lease_seconds=600).claimed:
                pass
            chunks = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.destination))
            result: dict[str, Any] = {"embeddings": chunks.fetchone()[0]}  # type: ignore[index]
            own = suggest_min_similarity(similarity_profile(conn, v.name, sample=200, k=10))
            result["calibrated_on_rows"] = own
            for kind, pairs in query_sets.items():
                answers = [row for row, _ in pairs]
                vectors = encoder.encode([v.query_instruction + q for _, q in pairs]).vectors
                on_queries = suggest_min_similarity(
                    similarity_profile(conn, v.name, list(vectors), k=10)
                )
                found = np.array(answers_found(conn, table, vectors, answers))
                hits = found[~np.isnan(found)]
                noise = random_similarities(conn, v.destination, vectors)
                thresholds = {
                    "default": v.min_similarity,
                    "calibrated_on_rows": own,
                    "calibrated_on_queries": on_queries,
                }
                result[kind] = {
                    "hit_at_10": len(hits) / len(found),
                    "answer_similarity_p1": float(np.percentile(hits, 1)),
                    "answer_similarity_p10": float(np.percentile(hits, 10)),
                    "answer_similarity_p50": float(np.percentile(hits, 50)),
                    "hidden": {
                        name: {
                            "threshold": t,
                            "share": float(np.mean(hits < t)),
                            "random_above": float(np.mean(noise >= t)),
                        }
                        for name, t in thresholds.items()
                    },
                }
                figures["queries"][kind] = len(pairs)
            figures[chunking] = result
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{figures['rows']} docstrings (the longest), MiniLM; queries: {figures['queries']}")
    for chunking in ("none", "tokens"):
        r = figures[chunking]
        print(
            f"chunking={chunking}: {r['embeddings']} embeddings;"
            f" calibrate on the rows suggests {r['calibrated_on_rows']:.2f}"
        )
        for kind in query_sets:
            q = r[kind]
            print(
                f"  {kind:<8} hit@10 {q['hit_at_10']:.3f}; the answer's similarity p1"
                f" {q['answer_similarity_p1']:.2f} p10 {q['answer_similarity_p10']:.2f}"
                f" p50 {q['answer_similarity_p50']:.2f}"
            )
            for name, h in q["hidden"].items():
                print(
                    f"    {name:<22} {h['threshold']:.2f} hides {h['share']:6.1%} of the answers,"
                    f" lets {h['random_above']:6.2%} of random rows through"
                )


if __name__ == "__main__":
    main()
