"""Small models the repository can build offline, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_cross_encoder(target: Path, seed: int = 1234) -> Path:
    """A small cross-encoder in `target`: the bundled MiniLM encoder with a
    seeded one-logit head (no cross-encoder weights can be downloaded here).
    Real architecture, real tokenizer, deterministic scores; untrained as a
    reranker, so fine-tuning has everything to teach it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rowembed.workers.runtime.models import bundled_model_path

    source = bundled_model_path(MINILM)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized weights": that is the point
    try:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.fill_(0.1)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target
