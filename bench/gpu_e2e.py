"""The issue-4 GPU check: bge-base's architecture end to end into PostgreSQL.

    python bench/gpu_e2e.py [--rows 20000] [--device auto] [--batch-rows N] [--json]

A BERT with bge-base-en-v1.5's shape (12 layers, 768 hidden, CLS pooling,
normalized, 512 tokens) and random weights (the same FLOPs; no download), the
bundled MiniLM's tokenizer (bge's uncased vocabulary). Rows follow the design
brief's length mix: log-normal token counts, median 120, clipped to 8..512
(sigma 0.73, which gives the brief's mean of about 157 tokens). Measures, in one
process: (1) the model alone over all rows (tokenize + forward, globally
length-sorted), rows/s and tokens/s; (2) end to end: rows inserted, queued,
embedded by a real `rowembed worker` (with its dispatcher) and written, the
index deferred, until the queue is empty; then the time until the dispatcher
has built the HNSW index. Embedded
PostgreSQL and Redis unless ROWEMBED_DATABASE_URL / ROWEMBED_REDIS_URL are set.
Runs on CPU too (use a few hundred rows), which is how it is smoke-tested.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rowembed.dev.bench import drained, wait_for, worker_process
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import connect, create_vectorizer, get_vectorizer, migrate
from rowembed.pgplugin.status import padding_overhead, status
from rowembed.settings import Settings
from rowembed.workers.runtime import Encoder, resolve_model_path

TOKENIZER_FROM = "sentence-transformers/all-MiniLM-L6-v2"


def random_bge_base(directory: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(TOKENIZER_FROM))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 768, "pooling_mode_cls_token": True})
    )
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    return directory


def length_mix_texts(rows: int, tokenizer: Any) -> list[str]:
    """Texts of log-normal token counts (special tokens included)."""
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(120), 0.73, rows)), 8, 512).astype(int)
    words = [w for w in ("data", "table", "row", "query", "index", "vector", "model", "text")
             if len(tokenizer.tokenize(w)) == 1]  # fmt: skip
    return [" ".join(rng.choice(words, n - 2)) for n in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-rows", type=int, help="ROWEMBED_BATCH_ROWS for the worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    figures: dict[str, Any] = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(random_bge_base(Path(tmp) / "bge-base-random"))
        encoder = Encoder.load(model_dir, device=args.device)
        figures["device"] = str(encoder.device)
        if encoder.device.type == "cuda":
            import torch

            figures["card"] = torch.cuda.get_device_name(encoder.device)
        texts = length_mix_texts(args.rows, encoder.tokenizer)
        encoder.encode(texts[:256])  # warm-up
        started = time.perf_counter()
        encoded = encoder.encode(texts)
        seconds = time.perf_counter() - started
        figures["forward_rows_per_s"] = args.rows / seconds
        figures["forward_tokens_per_s"] = encoded.tokens / seconds
        figures["mean_tokens"] = encoded.tokens / args.rows
        figures["padding_overhead"] = encoded.padded_tokens / encoded.tokens - 1
        del encoder

        env = {
            "ROWEMBED_DEVICE": args.device,
            "ROWEMBED_SWEEP_SECONDS": "0.5",
            "ROWEMBED_INDEX_MEMORY": "4GB",
            "ROWEMBED_INDEX_WORKERS": "8",
        }
        if args.batch_rows:
            env["ROWEMBED_BATCH_ROWS"] = str(args.batch_rows)
        with (
            services(Settings.from_env()) as (database_url, redis_url),
            connect(database_url) as conn,
        ):
            migrate(conn)
            with worker_process(database_url, redis_url, env):
                create_text_table(conn, "gpu_warmup", texts[:64])
                warm = create_vectorizer(
                    conn, "gpu_warmup", ["body"], model=model_dir, dimensions=768
                )
                wait_for(lambda: drained(conn, warm), timeout=600, interval=0.1)
                create_text_table(conn, "gpu_e2e", texts)
                started = time.perf_counter()
                v = create_vectorizer(
                    conn, "gpu_e2e", ["body"], model=model_dir, dimensions=768,
                    defer_index_above=0,
                )  # fmt: skip
                wait_for(lambda: drained(conn, v), timeout=3600, interval=0.1)
                seconds = time.perf_counter() - started
                # The worker's dispatcher builds the deferred index once the backlog drains.
                wait_for(lambda: get_vectorizer(conn, v.id).index_state == "built", timeout=3600)
                figures["index_built_after_s"] = time.perf_counter() - started - seconds
            written = status(conn, v.name)[0].embedded
            if written != args.rows:
                raise RuntimeError(f"{written} of {args.rows} rows embedded")
            figures["end_to_end_rows_per_s"] = args.rows / seconds
            figures["end_to_end_ratio"] = (
                figures["end_to_end_rows_per_s"] / figures["forward_rows_per_s"]
            )
            figures["worker_padding_overhead"] = padding_overhead(conn, v.id)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:<26} {value:,.3f}" if isinstance(value, float) else f"{key:<26} {value}")


if __name__ == "__main__":
    main()
