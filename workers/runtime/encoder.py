"""A Hugging Face encoder that turns texts into L2-normalized sentence vectors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batching import padded_tokens, plan_batches
from .models import Pooling, PoolingConfig, resolve_model_path

log = logging.getLogger(__name__)

DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 65536}  # CPU: small batches stay in cache
DEFAULT_MAX_ROWS = 512


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]
    truncated: int  # how many inputs were cut at the model's limit


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray  # (n, dimensions) float32, in input order
    truncated: int
    tokens: int  # real tokens
    padded_tokens: int  # tokens computed, padding included


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Encoder:
    """Load once, then `encode(texts)`. Not thread-safe; one per process or GPU."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        pooling: PoolingConfig,
        max_length: int,
        device: torch.device,
        token_budget: int | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        name: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.device = device
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET[device.type]
        self.max_rows = max_rows
        self.name = name
        self.pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)

    @classmethod
    def load(
        cls,
        name: str,
        *,
        device: str = "auto",
        token_budget: int | None = None,
        pooling: Pooling | None = None,
        dtype: torch.dtype | None = None,
    ) -> Encoder:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path: Path = resolve_model_path(name)
        torch_device = pick_device(device)
        if dtype is None:
            dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        config = PoolingConfig.from_model_dir(path)
        if pooling is not None:
            config = PoolingConfig(pooling, config.normalize, config.max_seq_length)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        model.eval().to(torch_device)
        limits = [
            config.max_seq_length,
            getattr(tokenizer, "model_max_length", None),
            position_limit(model.config),
        ]
        max_length = min(int(x) for x in limits if x and int(x) < 1_000_000)
        log.info(
            "loaded %s from %s on %s (%s, %s pooling, max %d tokens)",
            name,
            path,
            torch_device,
            dtype,
            config.mode,
            max_length,
        )
        return cls(model, tokenizer, config, max_length, torch_device, token_budget, name=name)

    @property
    def dimensions(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        batch = self.tokenizer(  # type: ignore[operator]
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        # The fast tokenizer keeps what truncation cut in `overflowing`.
        truncated = sum(1 for e in batch.encodings if e.overflowing)
        return Tokenized(batch["input_ids"], truncated)

    def encode(self, texts: Sequence[str]) -> Encoded:
        tokenized = self.tokenize(texts)
        return self.encode_tokenized(tokenized)

    @torch.inference_mode()
    def encode_tokenized(self, tokenized: Tokenized) -> Encoded:
        ids = tokenized.ids
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.token_budget, self.max_rows)
        out = np.empty((len(ids), self.dimensions), dtype=np.float32)
        for batch in batches:
            width = lengths[batch[0]]  # longest first
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                input_ids[row, : lengths[index]] = torch.tensor(ids[index])
                mask[row, : lengths[index]] = 1
            input_ids = input_ids.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden.float(), mask, self.pooling.mode)
            if self.pooling.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[batch] = pooled.cpu().numpy()
        return Encoded(out, tokenized.truncated, sum(lengths), padded_tokens(lengths, batches))


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Sentence vectors from token states (batch, tokens, dim), right-padded."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(1).values
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def position_limit(config: object) -> int | None:
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    # RoBERTa-style models reserve pad_token_id + 1 positions (514 -> 512).
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        return int(positions) - int(getattr(config, "pad_token_id", 1)) - 1
    return int(positions)
