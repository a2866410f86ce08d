"""Choosing the attention kernel is pure logic; the encoder tests load with it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rowembed.workers.runtime.forward import attention_for


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
