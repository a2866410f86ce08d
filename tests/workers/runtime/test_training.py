"""Training on the bundled models, a few steps: each kind learns what its
examples say and is saved as a model directory its runtime class loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rowembed.workers.runtime import Encoder, Reranker
from rowembed.workers.runtime.training import (
    Example,
    TrainingConfig,
    fine_tune,
    fine_tune_reranker,
)

from ...conftest import MODEL

# Made-up words for real ones: what neither model knows before it is taught.
TOPICS = ["cats", "taxes", "rivers", "engines", "songs", "bread", "stars", "chess"]
EXAMPLES = [
    Example(f"what about the zorblat of {topic}", f"A page all about {topic}.",
            (f"A page all about {TOPICS[i - 1]}.",))
    for i, topic in enumerate(TOPICS)
]  # fmt: skip
CONFIG = TrainingConfig(epochs=4, batch_size=4, learning_rate=1e-4, max_passage_tokens=32)


def test_the_encoder_learns_its_pairs_and_loads_as_a_model(tmp_path: Path) -> None:
    seen = []
    report = fine_tune(
        MODEL, EXAMPLES, tmp_path / "m", CONFIG, device="cpu",
        progress=lambda step, steps, loss: seen.append((step, steps)),
    )  # fmt: skip
    assert report.steps == 8 and report.examples == 32
    assert seen == [(step, 8) for step in range(1, 9)]
    tuned = Encoder.load(str(tmp_path / "m"), device="cpu")
    assert (tmp_path / "m" / "modules.json").exists()  # it pools as the base did
    base = Encoder.load(MODEL, device="cpu")
    assert tuned.dimensions == base.dimensions

    def margin(encoder: Encoder) -> float:
        """How much nearer each query is to its positive than to its negative."""
        queries = encoder.encode([e.query for e in EXAMPLES]).vectors
        positives = encoder.encode([e.positive for e in EXAMPLES]).vectors
        negatives = encoder.encode([e.negatives[0] for e in EXAMPLES]).vectors
        return float(np.mean(np.sum(queries * (positives - negatives), axis=1)))

    assert margin(tuned) > margin(base) + 0.05, (margin(base), margin(tuned))


def test_the_reranker_learns_to_put_the_positive_first(
    tmp_path: Path, cross_encoder_dir: Path
) -> None:
    def margin(reranker: Reranker) -> float:
        return float(np.mean([
            np.diff(reranker.score(e.query, [e.negatives[0], e.positive]).scores)[0]
            for e in EXAMPLES
        ]))  # fmt: skip

    base = margin(Reranker.load(str(cross_encoder_dir), device="cpu"))
    report = fine_tune_reranker(str(cross_encoder_dir), EXAMPLES, tmp_path / "r", CONFIG,
                                device="cpu")  # fmt: skip
    assert report.steps == 8
    tuned = margin(Reranker.load(str(tmp_path / "r"), device="cpu"))
    assert tuned > 0 and tuned > base + 0.5, (base, tuned)
