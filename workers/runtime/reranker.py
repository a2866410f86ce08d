"""A Hugging Face cross-encoder (bge-reranker: XLM-RoBERTa + a one-logit head)
that scores (query, passage) pairs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .batching import padded_tokens, plan_batches
from .encoder import DEFAULT_MAX_ROWS, DEFAULT_TOKEN_BUDGET, pick_device, position_limit
from .models import resolve_model_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # (n,) float32 in input order: raw logits, or sigmoid of them
    truncated: int  # pairs cut to fit the model's limit
    tokens: int
    padded_tokens: int


class Reranker:
    """Load once, then `score(query, passages)`. Not thread-safe."""

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

    @classmethod
    def load(
        cls,
        name: str,
        *,
        device: str = "auto",
        token_budget: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> Reranker:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = resolve_model_path(name)
        torch_device = pick_device(device)
        if dtype is None:
            dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa"
        )
        if model.config.num_labels != 1:
            raise ValueError(f"{name} has {model.config.num_labels} labels; a reranker has one")
        model.eval().to(torch_device)
        limits = [getattr(tokenizer, "model_max_length", None), position_limit(model.config)]
        max_length = min(int(x) for x in limits if x and int(x) < 1_000_000)
        log.info(
            "loaded reranker %s on %s (%s, max %d tokens)", name, torch_device, dtype, max_length
        )
        return cls(model, tokenizer, max_length, torch_device, token_budget, name=name)

    def score(self, query: str, passages: Sequence[str], *, sigmoid: bool = False) -> Scored:
        return self.score_pairs([(query, p) for p in passages], sigmoid=sigmoid)

    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, sigmoid: bool = False) -> Scored:
        if not pairs:
            return Scored(np.empty(0, dtype=np.float32), 0, 0, 0)
        batch = self.tokenizer(  # type: ignore[operator]
            [q for q, _ in pairs],
            [p for _, p in pairs],
            truncation="longest_first",
            max_length=self.max_length,
            return_attention_mask=False,
        )
        ids = batch["input_ids"]
        types = batch.get("token_type_ids")
        truncated = sum(1 for e in batch.encodings if e.overflowing)
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.token_budget, self.max_rows)
        out = np.empty(len(ids), dtype=np.float32)
        for rows in batches:
            width = lengths[rows[0]]
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            type_ids = torch.zeros((len(rows), width), dtype=torch.long)
            for row, index in enumerate(rows):
                n = lengths[index]
                input_ids[row, :n] = torch.tensor(ids[index])
                mask[row, :n] = 1
                if types is not None:
                    type_ids[row, :n] = torch.tensor(types[index])
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if types is not None:
                inputs["token_type_ids"] = type_ids
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
            out[rows] = logits[:, 0].float().cpu().numpy()
        if sigmoid:
            out = 1.0 / (1.0 + np.exp(-out))
        return Scored(out, truncated, sum(lengths), padded_tokens(lengths, batches))
