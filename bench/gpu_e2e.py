"""The issue-4 GPU check: bge-base's architecture end to end into PostgreSQL.

    python bench/gpu_e2e.py [--rows 20000] [--device auto] [--batch-rows N] [--json]
                            [--stages] [--tiny] [--no-worker]

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

Also in the same process: the model alone with every batch's inputs already on
the device (forward only: the ceiling), and `encode_tokenized` on the
tokenized rows (inputs built, copied, pooled, copied back), with their ratio.

`--stages`: the worker's pipeline (`drain`, the same code and defaults as
`rowembed worker`) in this process over the same rows, timed per stage (claim,
read, tokenize, build inputs, host to device, model, pool and copy back, write):
microseconds per row and share of the wall time. The stages overlap (three
threads), so shares may sum past 1. On CUDA a second pass waits for the device
at each stage's end, charging device time to the stage that queued it.
`--tiny`: a 2-layer, 128-wide BERT instead, so that on a CPU the host stages
(what a GPU would wait on) are not hidden by the model. `--no-worker`: skip the
end-to-end run through a Celery worker.
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

from rowembed.dev.bench import drained, drop_if_exists, wait_for, worker_process
from rowembed.dev.demo import services
from rowembed.dev.sample_tables import create_text_table
from rowembed.pgplugin import (
    connect,
    create_vectorizer,
    drop_vectorizer,
    get_vectorizer,
    migrate,
)
from rowembed.pgplugin.backfill import start_backfill, step_backfill
from rowembed.pgplugin.status import padding_overhead, status
from rowembed.settings import Settings
from rowembed.workers.pipeline import BatchReport, drain
from rowembed.workers.policy import claim_rows
from rowembed.workers.runtime import Encoder, Tokenized, plan_batches, resolve_model_path
from rowembed.workers.runtime.stages import StageClock

TOKENIZER_FROM = "sentence-transformers/all-MiniLM-L6-v2"


def random_bge_base(directory: Path, tiny: bool = False) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    hidden, layers = (128, 2) if tiny else (768, 12)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
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
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode_cls_token": True})
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


def forward_only_seconds(encoder: Encoder, tokenized: Tokenized) -> float:
    """The model alone over `tokenized`, every batch's inputs already on the device."""
    import torch

    lengths = [len(x) for x in tokenized.ids]
    batches = plan_batches(lengths, encoder.token_budget, encoder.max_rows)
    inputs = [encoder.inputs(b, tokenized.ids, lengths) for b in batches]
    with torch.inference_mode():
        _synchronize(encoder)
        started = time.perf_counter()
        for x in inputs:
            encoder.model(**x)
        _synchronize(encoder)
    return time.perf_counter() - started


def _synchronize(encoder: Encoder) -> None:
    if encoder.device.type == "cuda":
        import torch

        torch.cuda.synchronize(encoder.device)


def model_figures(encoder: Encoder, texts: list[str]) -> dict[str, Any]:
    encoder.encode(texts[:256])  # warm-up
    rows = len(texts)
    started = time.perf_counter()
    tokenized = encoder.tokenize(texts)
    tokenize_seconds = time.perf_counter() - started
    forward = forward_only_seconds(encoder, tokenized)
    started = time.perf_counter()
    encoded = encoder.encode_tokenized(tokenized)
    encode_seconds = time.perf_counter() - started
    return {
        "tokenize_rows_per_s": rows / tokenize_seconds,
        "forward_only_rows_per_s": rows / forward,
        "forward_only_tokens_per_s": encoded.padded_tokens / forward,
        "encode_tokenized_rows_per_s": rows / encode_seconds,
        "encode_tokenized_ratio": forward / encode_seconds,
        "forward_rows_per_s": rows / (tokenize_seconds + encode_seconds),
        "forward_tokens_per_s": encoded.tokens / (tokenize_seconds + encode_seconds),
        "mean_tokens": encoded.tokens / rows,
        "padding_overhead": encoded.padded_tokens / encoded.tokens - 1,
    }


def stage_figures(
    database_url: str, encoder: Encoder, model_dir: str, texts: list[str], *, sync: bool
) -> dict[str, Any]:
    """The worker's pipeline in this process over `texts`, timed per stage."""
    settings = Settings.from_env()
    with connect(database_url) as conn, connect(database_url) as reader:
        drop_if_exists(conn, "gpu_stages")
        create_text_table(conn, "gpu_stages", texts)
        v = create_vectorizer(
            conn, "gpu_stages", ["body"], model=model_dir, dimensions=encoder.dimensions,
            backfill=False, defer_index_above=0,
        )  # fmt: skip
        start_backfill(conn, v.name)
        while step_backfill(conn, v.id, 50_000):
            pass
        clock = StageClock(sync=(lambda: _synchronize(encoder)) if sync else None)
        started = time.perf_counter()
        report, more = BatchReport(), True
        while more:
            batch, more = drain(
                conn, reader, v, encoder, limit=claim_rows(settings), lease_seconds=600,
                time_budget=3600, clock=clock,
            )  # fmt: skip
            report.add(batch)
        wall = time.perf_counter() - started
        drop_vectorizer(conn, v.name)
    if report.written != len(texts):
        raise RuntimeError(f"{report.written} of {len(texts)} rows written")
    return {
        "rows_per_s": len(texts) / wall,
        "stages": {
            name: {"us_per_row": round(us, 2), "share_of_wall": round(share, 3)}
            for name, us, share in clock.table(len(texts), wall)
        },
    }


def end_to_end_figures(
    database_url: str, redis_url: str, model_dir: str, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Rows inserted, embedded by a real `rowembed worker`, the index then built."""
    env = {
        "ROWEMBED_DEVICE": args.device,
        "ROWEMBED_SWEEP_SECONDS": "0.5",
        "ROWEMBED_INDEX_MEMORY": "4GB",
        "ROWEMBED_INDEX_WORKERS": "8",
    }
    if args.batch_rows:
        env["ROWEMBED_BATCH_ROWS"] = str(args.batch_rows)
    figures: dict[str, Any] = {}
    with connect(database_url) as conn:
        with worker_process(database_url, redis_url, env):
            drop_if_exists(conn, "gpu_warmup")
            create_text_table(conn, "gpu_warmup", texts[:64])
            warm = create_vectorizer(conn, "gpu_warmup", ["body"], model=model_dir, dimensions=768)
            wait_for(lambda: drained(conn, warm), timeout=600, interval=0.1)
            drop_if_exists(conn, "gpu_e2e")
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
        if written != len(texts):
            raise RuntimeError(f"{written} of {len(texts)} rows embedded")
        figures["end_to_end_rows_per_s"] = len(texts) / seconds
        figures["searchable_after_embedding_ratio"] = 1 + figures["index_built_after_s"] / seconds
        figures["worker_padding_overhead"] = padding_overhead(conn, v.id)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-rows", type=int, help="ROWEMBED_BATCH_ROWS for the worker")
    parser.add_argument("--stages", action="store_true", help="time the pipeline per stage")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 128-wide model")
    parser.add_argument("--no-worker", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["ROWEMBED_DEVICE"] = args.device
    figures: dict[str, Any] = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(random_bge_base(Path(tmp) / "bge-base-random", tiny=args.tiny))
        encoder = Encoder.load(model_dir, device=args.device)
        figures["device"] = str(encoder.device)
        figures["token_budget"] = encoder.token_budget
        if encoder.device.type == "cuda":
            import torch

            figures["card"] = torch.cuda.get_device_name(encoder.device)
        texts = length_mix_texts(args.rows, encoder.tokenizer)
        figures.update(model_figures(encoder, texts))
        with services(Settings.from_env()) as (database_url, redis_url):
            with connect(database_url) as conn:
                migrate(conn)
            if args.stages:
                figures["pipeline"] = stage_figures(
                    database_url, encoder, model_dir, texts, sync=False
                )
                figures["pipeline_ratio"] = (
                    figures["pipeline"]["rows_per_s"] / figures["forward_only_rows_per_s"]
                )
                if encoder.device.type == "cuda":
                    figures["pipeline_device_waited"] = stage_figures(
                        database_url, encoder, model_dir, texts, sync=True
                    )
            del encoder
            if not args.no_worker and not args.tiny:
                figures.update(end_to_end_figures(database_url, redis_url, model_dir, texts, args))
                figures["end_to_end_ratio"] = (
                    figures["end_to_end_rows_per_s"] / figures["forward_only_rows_per_s"]
                )
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"{key}: {value['rows_per_s']:,.1f} rows/s")
            print(f"  {'stage':<20} {'us/row':>10} {'share of wall':>14}")
            for name, stage in value["stages"].items():
                print(f"  {name:<20} {stage['us_per_row']:>10,.1f} {stage['share_of_wall']:>14.1%}")
        else:
            print(f"{key:<34} {value:,.3f}" if isinstance(value, float) else f"{key:<34} {value}")


if __name__ == "__main__":
    main()
