"""Fine-tuning on pairs from the database: held-out recall@10 and MRR@10 of
the base model against the fine-tuned one, and training throughput.

    python bench/finetune.py [--rows 2000] [--epochs 1] [--batch-size 16]
        [--negatives 3] [--learning-rate 5e-5] [--max-passage-tokens 256]
        [--rerank [--rerank-model DIR] [--rerank-depth 100]] [--device auto] [--json]

The table: standard-library docstrings, embedded by the bundled MiniLM in this
process. The pairs (rowembed/dev/sample_pairs.py): each docstring's first line
asked in a made-up jargon, whose answer is that docstring; a fifth of the
queries held out. `rowembed finetune`'s own path: pairs read by SQL, hard
negatives from the vectorizer's index, training, evaluation over the table.
With --rerank the vectorizer's rerank_model is fine-tuned on the same pairs and
negatives too, and judged reordering the embedder's top --rerank-depth: by
default a MiniLM cross-encoder with an untrained head (no reranker weights are
to be had offline: rowembed/dev/sample_models.py), or --rerank-model.
Embedded PostgreSQL unless ROWEMBED_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from rowembed.dev.bench import drop_if_exists
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.demo import services
from rowembed.dev.sample_models import minilm_cross_encoder
from rowembed.dev.sample_pairs import jargon_pairs
from rowembed.dev.sample_tables import create_text_table
from rowembed.finetune import FineTuneOptions, run_finetune
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.queue import Queue
from rowembed.settings import Settings
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder
from rowembed.workers.runtime.training import TrainingConfig

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-passage-tokens", type=int, default=256)
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument("--rerank-model", help="cross-encoder directory or hub id")
    parser.add_argument("--rerank-depth", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = [d.text for d in stdlib_docstrings(args.rows)]
    pairs = jargon_pairs(texts)
    with (
        services(Settings.from_env()) as (database_url, _),
        connect(database_url) as conn,
        tempfile.TemporaryDirectory() as scratch,
    ):
        migrate(conn)
        drop_if_exists(conn, "bench_ft_docs")
        create_text_table(conn, "bench_ft_docs", texts)
        conn.execute("DROP TABLE IF EXISTS bench_ft_pairs")
        conn.execute("CREATE TABLE bench_ft_pairs (query text, doc int)")
        with conn.cursor().copy("COPY bench_ft_pairs FROM STDIN") as copy:
            for row in pairs:
                copy.write_row(row)
        rerank_model = args.rerank_model or str(minilm_cross_encoder(Path(scratch) / "reranker"))
        v = create_vectorizer(
            conn, "bench_ft_docs", ["body"], model=MODEL, rerank_model=rerank_model
        )
        encoder = Encoder.load(MODEL, device=args.device)
        while run_batch(conn, Queue(v), encoder, limit=256, lease_seconds=600).claimed:
            pass
        options = FineTuneOptions(
            output=Path(scratch) / "model",
            negatives=args.negatives,
            device=args.device,
            training=TrainingConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                max_passage_tokens=args.max_passage_tokens,
            ),
            rerank_output=Path(scratch) / "model-reranker" if args.rerank else None,
            rerank_depth=args.rerank_depth,
        )
        done = run_finetune(
            conn, v.name, "SELECT query, doc FROM bench_ft_pairs", options, say=lambda _: None
        )
    figures = {
        "rows": len(texts),
        "pairs": len(pairs),
        "train_pairs": done.train_pairs,
        "held_out_queries": done.held_out_queries,
        "corpus_rows": done.corpus_rows,
        "device": str(encoder.device),
        "base": {"recall_at_10": done.base.recall, "mrr_at_10": done.base.mrr},
        "fine_tuned": {"recall_at_10": done.tuned.recall, "mrr_at_10": done.tuned.mrr},
        "training_seconds": done.report.seconds,
        "pairs_per_second": done.report.pairs_per_second,
        "example_query": pairs[0][0],
    }
    rerank = done.rerank
    if rerank is not None:
        figures["rerank"] = {
            "model": args.rerank_model or "MiniLM cross-encoder, untrained head",
            "depth": rerank.depth,
            **{
                label: {"recall_at_10": q.recall, "mrr_at_10": q.mrr}
                for label, q in (
                    ("embedder_order", rerank.embedder),
                    ("base", rerank.base),
                    ("fine_tuned", rerank.tuned),
                )
            },
            "training_seconds": rerank.report.seconds,
            "pairs_per_second": rerank.report.pairs_per_second,
        }
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{len(texts)} docstrings, {len(pairs)} jargon pairs (e.g. {pairs[0][0]!r});"
        f" {done.train_pairs} trained on, {done.held_out_queries} held-out queries over"
        f" {done.corpus_rows} rows; {figures['device']}"
    )
    print(f"  base        recall@10 {done.base.recall:.3f}   MRR@10 {done.base.mrr:.3f}")
    print(f"  fine-tuned  recall@10 {done.tuned.recall:.3f}   MRR@10 {done.tuned.mrr:.3f}")
    print(
        f"  training: {done.train_pairs} pairs x {args.epochs} epoch(s), {args.negatives} hard"
        f" negatives each, passages cut at {args.max_passage_tokens} tokens:"
        f" {done.report.seconds:.1f} s, {done.report.pairs_per_second:.1f} pairs/s"
    )
    if rerank is not None:
        print(f"  reranking the embedder's top {rerank.depth} ({figures['rerank']['model']}):")
        for label, q in (
            ("no rerank", rerank.embedder),
            ("base", rerank.base),
            ("fine-tuned", rerank.tuned),
        ):
            print(f"  {label:<11} recall@10 {q.recall:.3f}   MRR@10 {q.mrr:.3f}")
        print(
            f"  reranker training: {rerank.report.seconds:.1f} s,"
            f" {rerank.report.pairs_per_second:.1f} pairs/s"
        )


if __name__ == "__main__":
    main()
