"""Rerank latency: one query against 100 candidates, as the search path asks.

    python bench/rerank_latency.py                 # bge-reranker-base's architecture
    python bench/rerank_latency.py --model DIR     # any cross-encoder directory or hub id
    python bench/rerank_latency.py --json

Without --model it builds XLM-RoBERTa-base (bge-reranker-base's architecture:
12 layers, hidden 768) with random weights and a BERT tokenizer from the bundled
MiniLM model: the same FLOPs per token as bge-reranker-base, no download.
Candidates are standard-library docstrings (real lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def build_random_bge_reranker_base(target: str) -> str:
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from rowembed.workers.runtime.models import bundled_model_path

    tokenizer = AutoTokenizer.from_pretrained(
        bundled_model_path("sentence-transformers/all-MiniLM-L6-v2")
    )
    config = XLMRobertaConfig(
        vocab_size=tokenizer.vocab_size,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=514,
    )
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="cross-encoder directory or hub id")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from rowembed.dev.corpus import stdlib_docstrings
    from rowembed.workers.runtime import Reranker

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_random_bge_reranker_base(tmp)
        reranker = Reranker.load(model, device=args.device)
        passages = [d.text for d in stdlib_docstrings(args.candidates * 5)][::5][: args.candidates]
        query = "how do I read a compressed file line by line"
        reranker.score(query, passages)  # warm-up
        times = []
        for _ in range(args.repeat):
            if reranker.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = reranker.score(query, passages)
            if reranker.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    figures = {
        "model": args.model or "XLM-RoBERTa-base, random weights (bge-reranker-base shape)",
        "device": str(reranker.device),
        "machine": torch.cuda.get_device_name()
        if reranker.device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "candidates": len(passages),
        "tokens": result.tokens,
        "padded_tokens": result.padded_tokens,
        "truncated": result.truncated,
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "pairs_per_s": round(len(passages) / statistics.median(times), 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>14}: {value}")


if __name__ == "__main__":
    main()
