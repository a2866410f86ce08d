"""A Hugging Face encoder that turns texts into L2-normalized sentence vectors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batching import padded_tokens, plan_batches
from .chunking import ChunkPlan, windows
from .forward import CHARS_PER_TOKEN, BatchedModel, Loaded
from .models import Pooling
from .stages import StageClock, timed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokenized:
    texts: list[str]
    ids: list[list[int]]
    cut: list[bool]  # per input: truncation cut it at the model's limit

    @property
    def truncated(self) -> int:
        return sum(self.cut)

    def subset(self, indices: Sequence[int]) -> Tokenized:
        return Tokenized(
            [self.texts[i] for i in indices],
            [self.ids[i] for i in indices],
            [self.cut[i] for i in indices],
        )


@dataclass(frozen=True)
class Chunked:
    """Texts cut into chunks: one model input per chunk, texts' chunks in order."""

    tokenized: Tokenized
    spans: list[list[tuple[int, int]]]  # per text: each chunk's [start, end) characters
    cut: list[bool]  # per text: text was left beyond the last chunk allowed

    def inputs_of(self) -> list[range]:
        """Per text, the indices of its chunks' inputs."""
        ranges, first = [], 0
        for spans in self.spans:
            ranges.append(range(first, first + len(spans)))
            first += len(spans)
        return ranges


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray  # (n, dimensions) float32, in input order
    truncated: int
    tokens: int  # real tokens
    padded_tokens: int  # tokens computed, padding included


class Encoder(BatchedModel):
    """Load once, then `encode(texts)`, or `tokenize` in one thread and
    `encode_tokenized` in another (the worker overlaps them). One per process or GPU."""

    auto_class = "AutoModel"

    def __init__(self, loaded: Loaded, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        self.pooling = loaded.pooling
        # A fast tokenizer's settings are mutated on every call: one caller at a time.
        self._tokenizing = threading.Lock()
        log.info("%s pools by %s", self.name, self.pooling.mode)

    @property
    def dimensions(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids, cut at the model's limit. Each text is first cut at
        `max_chars` characters, so a huge row costs no more than a long one."""
        bounded = [t[: self.max_chars] for t in texts]
        with self._tokenizing:
            batch = self.tokenizer(  # type: ignore[operator]
                bounded,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        # The fast tokenizer keeps what truncation cut in `overflowing`.
        cut = [
            bool(e.overflowing) or len(b) < len(t)
            for e, b, t in zip(batch.encodings, bounded, texts, strict=True)
        ]
        return Tokenized(bounded, batch["input_ids"], cut)

    def chunk(self, texts: Sequence[str], plan: ChunkPlan, instruction: str = "") -> Chunked:
        """`texts` (without the passage instruction) cut into chunks on token
        boundaries of this model's tokenizer; each chunk's input is the
        instruction and its tokens between the model's special tokens, so none
        is truncated."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{self.name}: chunking needs a fast tokenizer (character offsets)")
        with self._tokenizing:
            head, tail = self._special_tokens()
            prefix = head + self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
            size, overlap = plan.window(self.max_length, len(prefix) + len(tail))
            bounded = [self._token_prefix(t, size * plan.max_chunks) for t in texts]
            batch = self.tokenizer(
                bounded,
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,  # longer than the model's limit is the point: no warning
            )
        chunk_texts: list[str] = []
        ids: list[list[int]] = []
        spans: list[list[tuple[int, int]]] = []
        cut: list[bool] = []
        for text, full, row_ids, offsets in zip(
            bounded, texts, batch["input_ids"], batch["offset_mapping"], strict=True
        ):
            found, left = windows(text, offsets, size, overlap, plan.max_chunks)
            spans.append([(w.start_char, w.end_char) for w in found])
            cut.append(left or len(text) < len(full))
            for w in found:
                chunk_texts.append(instruction + text[w.start_char : w.end_char])
                ids.append(prefix + row_ids[w.first : w.end] + tail)
        return Chunked(Tokenized(chunk_texts, ids, [False] * len(ids)), spans, cut)

    def _token_prefix(self, text: str, tokens: int) -> str:
        """A prefix of `text` that holds more than `tokens` tokens (or all of it):
        the first of 2, 8, 32 characters a token that does. Tokenizing costs the
        characters it reads, and a character may be a token or more (CJK): a 2 MB
        row is read only as far as its chunks go. Never past CHARS_PER_TOKEN."""
        cap = tokens * CHARS_PER_TOKEN
        chars = 2 * tokens
        while chars < min(len(text), cap):
            piece = text[:chars]
            found = self.tokenizer(
                piece, add_special_tokens=False, return_attention_mask=False, verbose=False
            )
            if len(found["input_ids"]) > tokens:
                return piece
            chars *= 4
        return text[:cap]

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text ([CLS] and [SEP], ...)."""
        bare = self.tokenizer("rowembed", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("rowembed")["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        raise ValueError(f"{self.name}: cannot tell the tokenizer's special tokens apart")

    def encode(self, texts: Sequence[str]) -> Encoded:
        tokenized = self.tokenize(texts)
        return self.encode_tokenized(tokenized)

    @torch.inference_mode()
    def encode_tokenized(self, tokenized: Tokenized, clock: StageClock | None = None) -> Encoded:
        """Vectors for `tokenized`, in input order. Pooled vectors stay on the
        device until the last batch: one copy back, and one wait for the device,
        per call, so the host builds the next batch while the device runs this one."""
        ids = tokenized.ids
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.token_budget, self.max_rows)
        vectors = torch.empty((len(ids), self.dimensions), dtype=torch.float32, device=self.device)
        for batch in batches:
            with timed(clock, "build inputs"):
                host = self.host_inputs(batch, ids, lengths)
                host["rows"] = (
                    torch.tensor(batch).pin_memory() if self._pin else torch.tensor(batch)
                )
            with timed(clock, "host to device"):
                inputs = self.to_device(host)
                rows = inputs.pop("rows")
            with timed(clock, "model"):
                hidden = self.model(**inputs).last_hidden_state
            with timed(clock, "pool and copy back"):
                # Pooled in the model's precision (fp16 on CUDA); only the pooled
                # vectors are cast, not every token's state.
                pooled = pool(hidden, inputs["attention_mask"], self.pooling.mode).float()
                if self.pooling.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors[rows] = pooled
        with timed(clock, "pool and copy back"):
            out = vectors.cpu().numpy()
        return Encoded(out, tokenized.truncated, sum(lengths), padded_tokens(lengths, batches))


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Sentence vectors from token states (batch, tokens, dim), right-padded."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        # Weights that sum to one, applied in one batched product: in fp16 the
        # result stays within the states' range (a sum over 512 tokens first
        # could overflow).
        weights = mask.to(hidden.dtype) / mask.sum(1, keepdim=True).clamp(min=1).to(hidden.dtype)
        return torch.bmm(weights.unsqueeze(1), hidden).squeeze(1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(1).values
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
