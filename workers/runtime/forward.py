"""What the encoder and the reranker share: a model on a device, its tokenizer,
and right-padded input tensors for one length-sorted, token-budget batch."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 65536}  # CPU: small batches stay in cache
DEFAULT_MAX_ROWS = 512


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


class BatchedModel:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        max_length: int,
        device: torch.device,
        token_budget: int | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        name: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET[device.type]
        self.max_rows = max_rows
        self.name = name
        self.pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)

    def inputs(
        self,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]],
        lengths: Sequence[int],
        token_types: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors for the inputs `rows` (longest first), padded on the right."""
        width = lengths[rows[0]]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            n = lengths[index]
            input_ids[row, :n] = torch.tensor(ids[index])
            mask[row, :n] = 1
            if token_types is not None:
                types[row, :n] = torch.tensor(token_types[index])
        tensors = {"input_ids": input_ids, "attention_mask": mask}
        if token_types is not None:
            tensors["token_type_ids"] = types
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
