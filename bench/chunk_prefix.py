"""What chunking one huge row costs before the model runs: the encoder reads a
prefix holding just enough tokens (Encoder._token_prefix), where it once cut the
row at 64 characters a token of its allowed chunks and tokenized all of that.
Text with a token or more per character (CJK) is where the two differ most.

    python bench/chunk_prefix.py [--chars 2100000] [--max-chunks 100]
"""

from __future__ import annotations

import argparse
import resource
import time

from rowembed.workers.runtime import ChunkPlan, Encoder
from rowembed.workers.runtime.forward import CHARS_PER_TOKEN

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # bundled: no download
TEXTS = {"cjk": "漢字テキスト", "english": "the quick brown fox jumps over the lazy dog "}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=2_100_000)
    parser.add_argument("--max-chunks", type=int, default=100)
    args = parser.parse_args()
    encoder = Encoder.load(MODEL, device="cpu")
    plan = ChunkPlan(None, None, args.max_chunks)
    size, _ = plan.window(encoder.max_length, 2)
    print(f"{MODEL}, one row of {args.chars:,} characters, max_chunks {args.max_chunks}")
    for name, unit in TEXTS.items():
        text = (unit * (args.chars // len(unit) + 1))[: args.chars]
        started = time.perf_counter()
        chunked = encoder.chunk([text], plan)
        bounded = time.perf_counter() - started
        started = time.perf_counter()
        encoder.tokenizer(
            text[: size * args.max_chunks * CHARS_PER_TOKEN],
            add_special_tokens=False,
            return_offsets_mapping=True,
        )
        whole = time.perf_counter() - started
        print(
            f"{name:8} chunk() {bounded:6.2f} s ({len(chunked.spans[0])} chunks);"
            f" tokenizing the old cut {whole:6.2f} s; ratio {whole / bounded:5.1f}x;"
            f" peak RSS so far {peak_mb():,.0f} MB"
        )


if __name__ == "__main__":
    main()
