"""Chunked vectorizers: throughput per token against short rows, and what
chunking finds that truncation cannot.

    python bench/chunking.py [--docs 120] [--rounds 3] [--json]
    python bench/chunking.py --long [--docs 30] [--chunks 50] [--json]

Documents: standard-library docstrings joined in order, eight to a document
(long rows, several times the model's limit). Throughput: the worker's own
pipeline in this process on a real PostgreSQL (embedded unless
ROWEMBED_DATABASE_URL is set), claiming, reading, cutting, embedding and writing
the long rows with `chunking => 'tokens'` (no overlap), against an unchunked
vectorizer over short rows holding exactly those chunks' texts: the same model
inputs, so the ratio is the cost of chunking and of writing several rows per
source row. Rounds alternate; tokens per second of each, and the ratio of
medians. Retrieval: for each docstring that starts past the model's limit in
its document, its first line is the query and its document the answer: hit@10
and MRR@10 of the truncated (unchunked) vectorizer and the chunked one.

--long: documents of at least `--chunks` chunks each (standard-library
docstrings joined, in a different order per document), embedded to completion
by a real `rowembed worker` process with every setting at its default (its
claims sized by the work it measures, a row larger than a batch in slices),
against the same chunks stored as short rows through the same worker: chunks
per second of each, their ratio, and the rows parked (none is the point).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, drop_vectorizer, migrate
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.settings import Settings
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import ChunkPlan, Encoder

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PER_DOCUMENT = 8
Conn = psycopg.Connection[Any]


def documents(count: int) -> list[tuple[str, list[tuple[int, str]]]]:
    """(text, [(offset, docstring)]) per document."""
    docs = stdlib_docstrings(count * PER_DOCUMENT, min_chars=400)
    out = []
    for first in range(0, len(docs) - PER_DOCUMENT + 1, PER_DOCUMENT):
        parts, text = [], ""
        for doc in docs[first : first + PER_DOCUMENT]:
            if text:
                text += "\n\n"
            parts.append((len(text), doc.text))
            text += doc.text
        out.append((text, parts))
    return out


def embed_all(conn: Conn, v: Vectorizer, encoder: Encoder) -> tuple[int, float]:
    """Runs the pipeline until the queue is empty: (tokens, seconds)."""
    queue, tokens, started = Queue(v), 0, time.perf_counter()
    while True:
        report = run_batch(conn, queue, encoder, limit=256, lease_seconds=600)
        if not report.claimed:
            return tokens, time.perf_counter() - started
        tokens += report.tokens


def vectorizer(conn: Conn, table: str, name: str, **options: Any) -> Vectorizer:
    with contextlib.suppress(psycopg.Error):
        drop_vectorizer(conn, name)
    return create_vectorizer(
        conn,
        table,
        ["body"],
        model=MODEL,
        name=name,
        destination=f"{name}_emb",
        index_method="none",
        **options,
    )


def ranked(conn: Conn, table: str, name: str, vector: Any) -> list[int]:
    rows = conn.execute(
        sql.SQL("SELECT (item).id FROM rowembed.search(NULL::{}, %s, 10, -1, %s)").format(
            sql.Identifier(table)
        ),
        [vector, name],
    ).fetchall()
    return [r[0] for r in rows]


def long_documents(encoder: Encoder, count: int, chunks: int) -> list[str]:
    """`count` documents of at least `chunks` chunks of the model's limit each."""
    docs = [d.text for d in stdlib_docstrings(4000)]
    per_chunk = 4 * encoder.max_length  # characters, generously (about 4 per token)
    out = []
    for k in range(count):
        start, parts, size = (k * 97) % len(docs), [], 0
        while size < (chunks + 5) * per_chunk:
            text = docs[(start + len(parts)) % len(docs)]
            parts.append(text)
            size += len(text) + 2
        out.append("\n\n".join(parts))
    return out


def long_rows(args: argparse.Namespace) -> dict[str, Any]:
    """--long: a real worker at its defaults, long chunked rows against short rows."""
    from rowembed.dev.bench import drained, wait_for, worker_process
    from rowembed.pgplugin.status import status

    encoder = Encoder.load(MODEL, device="cpu")
    texts = long_documents(encoder, args.docs, args.chunks)
    chunked = encoder.chunk(texts, ChunkPlan(None, 0, 1000))
    per_doc = [len(spans) for spans in chunked.spans]
    short = chunked.tokenized.texts
    figures: dict[str, Any] = {
        "documents": len(texts),
        "chunks": len(short),
        "chunks_per_document_min": min(per_doc),
        "characters": sum(map(len, texts)),
        "cpus": os.cpu_count(),
    }
    del encoder
    with (
        services(Settings.from_env()) as (database_url, redis_url),
        connect(database_url) as conn,
    ):
        migrate(conn)
        create_text_table(conn, "bench_warmup", short[:16])
        create_text_table(conn, "bench_long_docs", texts)
        create_text_table(conn, "bench_chunk_rows", short)
        with worker_process(database_url, redis_url, {}):
            warm = vectorizer(conn, "bench_warmup", "bench_warmup")
            wait_for(lambda: drained(conn, warm), timeout=600, interval=0.1)
            for label, table, options in (
                ("short rows", "bench_chunk_rows", {}),
                ("chunked", "bench_long_docs", {"chunking": "tokens", "chunk_overlap": 0}),
            ):
                name = f"bench_{label.replace(' ', '_')}"
                started = time.perf_counter()
                v = vectorizer(conn, table, name, **options)
                wait_for(lambda v=v: drained(conn, v), timeout=3600, interval=0.2)
                seconds = time.perf_counter() - started
                (state,) = status(conn, name)
                figures[label] = {
                    "seconds": seconds,
                    "chunks_per_second": len(short) / seconds,
                    "parked": state.failed,
                }
    figures["chunked_over_short_rows"] = (
        figures["chunked"]["chunks_per_second"] / figures["short rows"]["chunks_per_second"]
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.long:
        args.docs = args.docs or 30
        figures = long_rows(args)
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            for key, value in figures.items():
                print(f"{key}: {value}")
        return 0
    args.docs = args.docs or 120

    encoder = Encoder.load(MODEL, device="cpu")
    docs = documents(args.docs)
    texts = [text for text, _ in docs]
    chunked = encoder.chunk(texts, ChunkPlan(None, 0, 1000))
    short = chunked.tokenized.texts  # every chunk's text, as rows of their own
    figures: dict[str, Any] = {
        "documents": len(texts),
        "chunks": len(short),
        "model_limit": encoder.max_length,
    }
    with services(Settings.from_env()) as (database_url, _), connect(database_url) as conn:
        migrate(conn)
        create_text_table(conn, "bench_long_docs", texts)
        create_text_table(conn, "bench_chunk_rows", short)
        rates: dict[str, list[float]] = {"short rows": [], "chunked": []}
        for _ in range(args.rounds):
            for label, table, options in (
                ("short rows", "bench_chunk_rows", {}),
                ("chunked", "bench_long_docs", {"chunking": "tokens", "chunk_overlap": 0}),
            ):
                v = vectorizer(conn, table, f"bench_{label.replace(' ', '_')}", **options)
                tokens, seconds = embed_all(conn, v, encoder)
                rates[label].append(tokens / seconds)
        figures["tokens_per_second"] = {k: statistics.median(r) for k, r in rates.items()}
        figures["chunked_over_short_rows"] = (
            figures["tokens_per_second"]["chunked"] / figures["tokens_per_second"]["short rows"]
        )

        truncated = vectorizer(conn, "bench_long_docs", "bench_truncated")
        embed_all(conn, truncated, encoder)
        whole = vectorizer(conn, "bench_long_docs", "bench_whole_chunked", chunking="tokens")
        embed_all(conn, whole, encoder)
        queries = []
        for key, (text, parts) in enumerate(docs):
            limit_chars = len(
                encoder.tokenizer.decode(encoder.tokenize([text]).ids[0], skip_special_tokens=True)
            )
            for offset, part in parts:
                if offset > limit_chars:
                    queries.append((key, part.splitlines()[0]))
        vectors = encoder.encode([q for _, q in queries]).vectors
        for name in (truncated.name, whole.name):
            hits, mrr = 0, 0.0
            for (answer, _), vector in zip(queries, vectors, strict=True):
                top = ranked(conn, "bench_long_docs", name, vector)
                if answer in top:
                    hits += 1
                    mrr += 1 / (top.index(answer) + 1)
            label = "truncated" if name == truncated.name else "chunked"
            figures[f"{label}_hit_at_10"] = hits / len(queries)
            figures[f"{label}_mrr_at_10"] = mrr / len(queries)
        figures["queries_past_the_limit"] = len(queries)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
