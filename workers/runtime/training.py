"""Fine-tuning on (query, relevant passage) examples with hard negatives, as
FlagEmbedding fine-tunes bge. The encoder: a contrastive loss (InfoNCE with a
temperature) where each query's positive competes with every passage of the
batch, its own mined negatives and the other queries' passages alike, with the
model's own pooling. The cross-encoder (reranker): each query's positive
against its own negatives, one group per query (cross-entropy over the
group's scores). Each saved as a model directory the Encoder or Reranker
loads as any other. Pure model code: no Celery, no database."""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .encoder import Encoder, pool
from .models import resolve_model_path
from .reranker import Reranker


@dataclass(frozen=True)
class Example:
    query: str  # with the query instruction
    positive: str  # as the vectorizer embeds it (passage instruction included)
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    temperature: float = 0.02  # FlagEmbedding's for bge
    warmup_share: float = 0.1
    max_query_tokens: int = 64
    max_passage_tokens: int = 256
    seed: int = 0


@dataclass
class TrainingReport:
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # per step

    @property
    def pairs_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


# The sentence-transformers files that say how the model pools: copied as they are.
_POOLING_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def fine_tune(
    base: str,
    examples: Sequence[Example],
    output: Path,
    config: TrainingConfig = TrainingConfig(),
    *,
    device: str = "auto",
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingReport:
    """Train a copy of encoder `base` on `examples` and save it in `output`
    (weights, config, tokenizer, pooling). `progress(step, steps, loss)` after
    each step."""
    encoder = Encoder.load(base, device=device, dtype=torch.float32)
    report = _train(
        encoder.model, encoder.device, examples, config, progress,
        lambda batch: _contrastive_loss(encoder, batch, config),
    )  # fmt: skip
    save(encoder, base, output)
    return report


def fine_tune_reranker(
    base: str,
    examples: Sequence[Example],
    output: Path,
    config: TrainingConfig = TrainingConfig(),
    *,
    device: str = "auto",
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingReport:
    """Train a copy of cross-encoder `base` on `examples` (queries without
    their instruction) and save it in `output`."""
    reranker = Reranker.load(base, device=device, dtype=torch.float32)
    report = _train(
        reranker.model, reranker.device, examples, config, progress,
        lambda batch: _group_loss(reranker, batch, config),
    )  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    reranker.model.save_pretrained(output)
    reranker.tokenizer.save_pretrained(output)  # type: ignore[attr-defined]
    return report


def _train(
    model: torch.nn.Module,
    device: torch.device,
    examples: Sequence[Example],
    config: TrainingConfig,
    progress: Callable[[int, int, float], None] | None,
    loss_of: Callable[[Sequence[Example]], torch.Tensor],
) -> TrainingReport:
    """AdamW with warm-up and linear decay over shuffled batches of `examples`."""
    if not examples:
        raise ValueError("no examples to train on")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    per_epoch = math.ceil(len(examples) / config.batch_size)
    steps = per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    warmup = max(1, int(steps * config.warmup_share))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup + 1)))
    )
    # bf16 autocast on a GPU that has it: the weights and optimizer stay fp32.
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    report = TrainingReport()
    started = time.monotonic()
    model.train()
    try:
        for _ in range(config.epochs):
            order = list(examples)
            rng.shuffle(order)
            for first in range(0, len(order), config.batch_size):
                batch = order[first : first + config.batch_size]
                with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                    loss = loss_of(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                report.steps += 1
                report.examples += len(batch)
                report.losses.append(float(loss.detach()))
                if progress is not None:
                    progress(report.steps, steps, report.losses[-1])
    finally:
        model.eval()
    report.seconds = time.monotonic() - started
    return report


def _contrastive_loss(
    encoder: Encoder, batch: Sequence[Example], config: TrainingConfig
) -> torch.Tensor:
    """Each query against every passage of the batch: positives first (query
    i's at column i), then every example's negatives."""
    queries = _embed(encoder, [e.query for e in batch], config.max_query_tokens)
    passages = [e.positive for e in batch] + [n for e in batch for n in e.negatives]
    scores = queries @ _embed(encoder, passages, config.max_passage_tokens).T
    labels = torch.arange(len(batch), device=scores.device)
    return torch.nn.functional.cross_entropy(scores.float() / config.temperature, labels)


def _group_loss(
    reranker: Reranker, batch: Sequence[Example], config: TrainingConfig
) -> torch.Tensor:
    """Each query's positive (first) against its negatives, scored as pairs; an
    example without negatives is grouped with the batch's other positives."""
    groups = []
    for e in batch:
        others = [o.positive for o in batch if o is not e][:3]
        groups.append([e.positive, *(e.negatives or others)])
    pairs = [(e.query, p) for e, group in zip(batch, groups, strict=True) for p in group]
    inputs = reranker.tokenizer(  # type: ignore[operator]
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding=True,
        truncation="longest_first",
        max_length=min(config.max_query_tokens + config.max_passage_tokens, reranker.max_length),
        return_tensors="pt",
    ).to(reranker.device)
    scores = reranker.model(**inputs).logits[:, 0].float()
    losses, first = [], 0
    for group in groups:
        logits = scores[first : first + len(group)].unsqueeze(0)
        losses.append(torch.nn.functional.cross_entropy(logits, logits.new_zeros(1).long()))
        first += len(group)
    return torch.stack(losses).mean()


def _embed(encoder: Encoder, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Normalized sentence vectors, with gradients (Encoder.encode has none)."""
    inputs = encoder.tokenizer(  # type: ignore[operator]
        texts,
        padding=True,
        truncation=True,
        max_length=min(max_tokens, encoder.max_length),
        return_tensors="pt",
    ).to(encoder.device)
    hidden = encoder.model(**inputs).last_hidden_state
    pooled = pool(hidden, inputs["attention_mask"], encoder.pooling.mode)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def save(encoder: Encoder, base: str, output: Path) -> None:
    """The model directory: weights and config, the tokenizer, and the base's
    pooling files (so it pools as the base did)."""
    output.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(output)
    encoder.tokenizer.save_pretrained(output)  # type: ignore[attr-defined]
    source = resolve_model_path(base)
    for name in _POOLING_FILES:
        if (source / name).exists():
            shutil.copy(source / name, output / name)
    for pooling in source.glob("*_Pooling"):
        shutil.copytree(pooling, output / pooling.name, dirs_exist_ok=True)
