"""What the encoder and the reranker share: loading a model and its tokenizer
onto a device, and right-padded input tensors for one length-sorted,
token-budget batch."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rowembed.families import ModelFamily, family_of

from .models import PoolingConfig, resolve_model_path

log = logging.getLogger(__name__)

# Rows per forward pass at most; the token budget is what bounds a pass.
DEFAULT_MAX_ROWS = {"cpu": 512, "cuda": 8192}
# Texts are cut at this many characters per token of the model's limit before
# they are tokenized: far beyond what ordinary text needs (about 4 characters a
# token), and a 10 MB row no longer costs seconds and gigabytes to tokenize.
CHARS_PER_TOKEN = 64


def default_token_budget(device: torch.device) -> int:
    """Padded tokens per forward pass. CPU: 2048 (small batches stay in cache).
    CUDA: 2 tokens per MiB of the card's memory, as a power of two from 65,536
    to 262,144 (an H100 or H200 gets the most; fewer, larger passes keep the
    card busy between the host's launches)."""
    if device.type != "cuda":
        return 2048
    mib = torch.cuda.get_device_properties(device).total_memory // 2**20
    return cuda_token_budget(int(mib))


def cuda_token_budget(memory_mib: int) -> int:
    budget = 65536
    while budget < 262144 and budget * 2 <= 2 * memory_mib:
        budget *= 2
    return budget


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def attention_for(requested: str, device: torch.device) -> str:
    """The attention kernel to load a model with. `auto`: flash attention on CUDA
    when the flash_attn package is installed (padded positions are dropped before
    attention: varlen kernels), else PyTorch's SDPA (length-sorted batches keep
    its padding small: see batch_stats.padded_tokens)."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def position_limit(config: object) -> int | None:
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    # RoBERTa-style models reserve pad_token_id + 1 positions (514 -> 512).
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        return int(positions) - int(getattr(config, "pad_token_id", 1)) - 1
    return int(positions)


def max_length(*limits: int | None) -> int:
    """The smallest real limit (tokenizers report 1e30 when they have none)."""
    return min(int(x) for x in limits if x and int(x) < 1_000_000)


@dataclass(frozen=True)
class Loaded:
    """A model and its tokenizer, on their device."""

    path: Path
    model: Any
    tokenizer: Any
    device: torch.device
    family: ModelFamily
    pooling: PoolingConfig  # an encoder's; a cross-encoder has none to read
    max_length: int  # tokens per input: the smallest of the model's limits


def load(
    name: str,
    auto_class: Any,
    *,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    attention: str = "auto",
) -> Loaded:
    """`name` (a hub id or a directory) with `auto_class` (AutoModel, ...), in
    eval mode on `device`; fp16 on CUDA unless `dtype` says otherwise."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(name)
    family = family_of(name)
    pooling = PoolingConfig.from_model_dir(path, default_mode=family.pooling)
    if family.padding_side != "right":
        raise ValueError(f"{name}: rowembed pads on the right; family {family.name} pads left")
    torch_device = pick_device(device)
    dtype = dtype or default_dtype(torch_device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    attention = attention_for(attention, torch_device)
    model = auto_class.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    model.eval().to(torch_device)
    limit = max_length(
        pooling.max_seq_length,
        family.max_tokens,
        getattr(tokenizer, "model_max_length", None),
        position_limit(model.config),
    )
    log.info(
        "loaded %s from %s on %s (%s, %s attention, family %s, max %d tokens)",
        name,
        path,
        torch_device,
        dtype,
        attention,
        family.name,
        limit,
    )
    return Loaded(path, model, tokenizer, torch_device, family, pooling, limit)


M = TypeVar("M", bound="BatchedModel")


class BatchedModel:
    """A loaded model that runs length-sorted, token-budget batches."""

    auto_class = "AutoModel"  # the transformers class that loads it

    @classmethod
    def load(
        cls: type[M],
        name: str,
        *,
        device: str = "auto",
        token_budget: int | None = None,
        dtype: torch.dtype | None = None,
        attention: str = "auto",
    ) -> M:
        """Load `name` once (a hub id or a directory); one per process or GPU."""
        import transformers

        auto_class = getattr(transformers, cls.auto_class)
        loaded = load(name, auto_class, device=device, dtype=dtype, attention=attention)
        return cls(loaded, name=name, token_budget=token_budget)

    def __init__(
        self,
        loaded: Loaded,
        name: str = "",
        token_budget: int | None = None,
        max_rows: int | None = None,
    ) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_length = loaded.max_length
        self.max_chars = self.max_length * CHARS_PER_TOKEN
        self.device = loaded.device
        self.family = loaded.family
        self.token_budget = token_budget or default_token_budget(self.device)
        self.max_rows = max_rows or DEFAULT_MAX_ROWS.get(self.device.type, 512)
        self.name = name
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", 0) or 0)
        self._pin = self.device.type == "cuda"

    def inputs(
        self,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]],
        lengths: Sequence[int],
        token_types: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors for the inputs `rows` (longest first), padded on the right, on
        the device."""
        return self.to_device(self.host_inputs(rows, ids, lengths, token_types))

    def host_inputs(
        self,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]],
        lengths: Sequence[int],
        token_types: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`inputs`, still on the host: filled with numpy in one pass per tensor
        (not row by row), in page-locked memory on CUDA so that the copy to the
        device does not wait for the device."""
        count = len(rows)
        width = lengths[rows[0]]
        row_lengths = np.fromiter((lengths[i] for i in rows), dtype=np.int64, count=count)
        real = np.arange(width) < row_lengths[:, None]  # row-major: each row's tokens in order
        total = int(row_lengths.sum())

        def padded(values: Sequence[Sequence[int]] | None, fill: int) -> torch.Tensor:
            tensor = torch.empty((count, width), dtype=torch.long, pin_memory=self._pin)
            array = tensor.numpy()
            array.fill(fill)
            if values is None:  # the attention mask
                array[real] = 1
            else:
                array[real] = np.fromiter(
                    chain.from_iterable(values[i] for i in rows), np.int64, total
                )
            return tensor

        tensors = {"input_ids": padded(ids, self.pad_id), "attention_mask": padded(None, 0)}
        if token_types is not None:
            tensors["token_type_ids"] = padded(token_types, 0)
        return tensors

    def to_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
