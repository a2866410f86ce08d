"""A Hugging Face cross-encoder (bge-reranker: XLM-RoBERTa + a one-logit head)
that scores (query, passage) pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batching import padded_tokens, plan_batches
from .forward import BatchedModel, Loaded


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # (n,) float32 in input order: raw logits, or sigmoid of them
    truncated: int  # pairs cut to fit the model's limit
    tokens: int
    padded_tokens: int


class Reranker(BatchedModel):
    """Load once, then `score(query, passages)`. Not thread-safe."""

    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, loaded: Loaded, **kwargs: Any) -> None:
        labels = loaded.model.config.num_labels
        if labels != 1:
            raise ValueError(f"{kwargs.get('name')} has {labels} labels; a reranker has one")
        super().__init__(loaded, **kwargs)

    def score(self, query: str, passages: Sequence[str], *, sigmoid: bool = False) -> Scored:
        return self.score_pairs([(query, p) for p in passages], sigmoid=sigmoid)

    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, sigmoid: bool = False) -> Scored:
        if not pairs:
            return Scored(np.empty(0, dtype=np.float32), 0, 0, 0)
        batch = self.tokenizer(  # type: ignore[operator]
            [q[: self.max_chars] for q, _ in pairs],
            [p[: self.max_chars] for _, p in pairs],
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
            logits = self.model(**self.inputs(rows, ids, lengths, types)).logits
            out[rows] = logits[:, 0].float().cpu().numpy()
        if sigmoid:
            out = 1.0 / (1.0 + np.exp(-out))
        return Scored(out, truncated, sum(lengths), padded_tokens(lengths, batches))
