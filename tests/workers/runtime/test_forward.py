"""Choosing the attention kernel (pure logic; the encoder tests load with it), and
building a batch's input tensors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rowembed.workers.runtime import Encoder, plan_batches
from rowembed.workers.runtime.forward import attention_for, cuda_token_budget


def test_an_explicit_kernel_is_kept() -> None:
    assert attention_for("eager", torch.device("cuda")) == "eager"


def test_auto_is_sdpa_on_cpu_and_without_flash_attn() -> None:
    assert attention_for("auto", torch.device("cpu")) == "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        assert attention_for("auto", torch.device("cuda")) == "sdpa"


def test_auto_is_flash_attention_on_cuda_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real(name, *a),
    )
    assert attention_for("auto", torch.device("cuda")) == "flash_attention_2"
    assert attention_for("auto", torch.device("cpu")) == "sdpa"


def row_by_row(
    rows: list[int], ids: list[list[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way: one row at a time (what `host_inputs` does at once)."""
    width = len(ids[rows[0]])
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, index in enumerate(rows):
        input_ids[r, : len(ids[index])] = torch.tensor(ids[index])
        mask[r, : len(ids[index])] = 1
    return input_ids, mask


def test_inputs_built_at_once_equal_those_built_row_by_row(encoder: Encoder) -> None:
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 30000, int(n))) for n in rng.integers(1, 40, 200)]
    types = [[i % 2 for i in range(len(x))] for x in ids]
    lengths = [len(x) for x in ids]
    for rows in plan_batches(lengths, 256, 64):
        built = encoder.host_inputs(rows, ids, lengths, types)
        expected_ids, expected_mask = row_by_row(rows, ids, encoder.pad_id)
        assert torch.equal(built["input_ids"], expected_ids)
        assert torch.equal(built["attention_mask"], expected_mask)
        expected_types, _ = row_by_row(rows, types, 0)
        assert torch.equal(built["token_type_ids"], expected_types)


@pytest.mark.parametrize(
    ("memory_mib", "budget"),
    [(8_192, 65_536), (24_576, 65_536), (81_559, 131_072), (143_771, 262_144), (196_608, 262_144)],
)
def test_the_cuda_token_budget_follows_the_cards_memory(memory_mib: int, budget: int) -> None:
    assert cuda_token_budget(memory_mib) == budget
