"""Building a forward pass's input tensors, row by row (the old way) vs numpy.

    python bench/input_build.py [--rows 20000]

The bench/gpu_e2e.py length mix tokenized by the bundled MiniLM tokenizer,
planned into passes at the GPU budgets (65,536 tokens / 512 rows,
262,144 / 8,192); best of three, microseconds per row. Host work only: on a GPU
this is time the device waits for unless it overlaps the previous pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rowembed.workers.runtime import Encoder, plan_batches

sys.path.insert(0, str(Path(__file__).parent))
from gpu_e2e import length_mix_texts


def row_by_row(rows: Sequence[int], ids: list[list[int]], lengths: list[int]) -> object:
    width = lengths[rows[0]]
    input_ids = torch.full((len(rows), width), 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, index in enumerate(rows):
        input_ids[r, : lengths[index]] = torch.tensor(ids[index])
        mask[r, : lengths[index]] = 1
    return input_ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    encoder = Encoder.load("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    ids = encoder.tokenize(length_mix_texts(args.rows, encoder.tokenizer)).ids
    lengths = [len(x) for x in ids]
    ways: dict[str, Callable[[Sequence[int], list[list[int]], list[int]], object]] = {
        "row by row": row_by_row,
        "numpy (host_inputs)": encoder.host_inputs,
    }
    for budget, max_rows in ((65_536, 512), (262_144, 8_192)):
        passes = plan_batches(lengths, budget, max_rows)
        for name, build in ways.items():
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for rows in passes:
                    build(rows, ids, lengths)
                best = min(best, time.perf_counter() - started)
            per_row = 1e6 * best / len(ids)
            print(f"{budget} tokens, {max_rows} rows a pass, {name}: {per_row:.1f} us/row")


if __name__ == "__main__":
    main()
