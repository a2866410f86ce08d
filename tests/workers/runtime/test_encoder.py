"""Parity with sentence-transformers on the bundled model, and the model lookup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rowembed.workers.runtime import Encoder, ModelNotFoundError, PoolingConfig, resolve_model_path
from rowembed.workers.runtime.encoder import pool
from rowembed.workers.runtime.models import bundled_model_path
from rowembed.workers.runtime.stages import StageClock

from ...conftest import MODEL

TEXTS = {
    "short": ["hello world", "PostgreSQL keeps rows; pgvector keeps their vectors."],
    "long": [" ".join(f"token{i} is word number {i} of a very long document" for i in range(400))],
    "non-English": [
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "東京は日本の首都です。",
        "Привет, как дела?",
        "¿Dónde está la biblioteca?",
    ],
}


@pytest.fixture(scope="module")
def reference() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(bundled_model_path(MODEL)), device="cpu")


@pytest.mark.parametrize("kind", TEXTS)
def test_vectors_match_sentence_transformers(kind: str, encoder: Encoder, reference: Any) -> None:
    texts = TEXTS[kind]
    ours = encoder.encode(texts).vectors
    theirs = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    assert ours.shape == theirs.shape == (len(texts), 384)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_mixed_lengths_in_one_call_match_one_by_one(encoder: Encoder) -> None:
    texts = [t for group in TEXTS.values() for t in group]
    together = encoder.encode(texts).vectors
    alone = np.stack([encoder.encode([t]).vectors[0] for t in texts])
    assert np.abs(together - alone).max() <= 1e-5


def test_output_is_l2_normalized(encoder: Encoder) -> None:
    vectors = encoder.encode(TEXTS["short"] + TEXTS["non-English"]).vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_truncation_at_the_model_limit_is_counted(encoder: Encoder) -> None:
    result = encoder.encode(TEXTS["long"] + TEXTS["short"])
    assert encoder.max_length == 256  # all-MiniLM-L6-v2's sentence-transformers limit
    assert result.truncated == 1
    assert result.tokens == 256 + sum(len(encoder.tokenize([t]).ids[0]) for t in TEXTS["short"])


def test_pooling_comes_from_the_sentence_transformers_config() -> None:
    config = PoolingConfig.from_model_dir(bundled_model_path(MODEL))  # type: ignore[arg-type]
    assert config == PoolingConfig("mean", True, 256)


def test_cls_pooling_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert PoolingConfig.from_model_dir(tmp_path) == PoolingConfig("cls", False, None)


def test_a_bare_encoder_defaults_to_normalized_mean_pooling(tmp_path: Path) -> None:
    assert PoolingConfig.from_model_dir(tmp_path) == PoolingConfig("mean", True, None)


def test_cls_pooling_takes_the_first_token(encoder: Encoder) -> None:
    import torch

    from rowembed.workers.runtime.encoder import pool

    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean")[1], hidden[1, :2].mean(0))
    assert torch.equal(pool(hidden, mask, "max")[1], hidden[1, 1])
    assert torch.equal(pool(hidden, mask, "lasttoken")[1], hidden[1, 1])


def test_bundled_model_resolves_offline() -> None:
    assert resolve_model_path(MODEL) == bundled_model_path(MODEL)


def test_missing_model_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        resolve_model_path("no-such-org/no-such-model", allow_download=False)
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


def test_the_attention_kernel_is_chosen_and_does_not_change_vectors(encoder: Encoder) -> None:
    eager = Encoder.load(MODEL, device="cpu", attention="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert encoder.model.config._attn_implementation == "sdpa"  # auto, on CPU
    texts = TEXTS["short"] + TEXTS["long"]
    assert np.abs(eager.encode(texts).vectors - encoder.encode(texts).vectors).max() < 1e-5


def test_a_huge_text_is_cut_before_it_is_tokenized(encoder: Encoder) -> None:
    huge = "word " * 2_000_000  # 10 MB: tokenizing it whole takes seconds and gigabytes
    tokenized = encoder.tokenize([huge, "short"])
    assert [len(t) for t in tokenized.texts] == [encoder.max_chars, 5]
    assert tokenized.cut == [True, False]
    assert tokenized.ids[0] == encoder.tokenize([huge[:20_000]]).ids[0]


def test_many_batches_and_a_stage_clock_change_no_vector(encoder: Encoder) -> None:
    """Vectors scattered back from many small batches, and with every stage
    waited for (the attribution mode), equal one pass's."""
    texts = [" ".join(["word"] * n) for n in (1, 50, 7, 300, 3, 120, 12, 2)] + TEXTS["non-English"]
    whole = encoder.encode(texts).vectors
    budget = encoder.token_budget
    clock = StageClock(sync=lambda: None)
    try:
        encoder.token_budget = 64  # a batch or two per text
        split = encoder.encode_tokenized(encoder.tokenize(texts), clock).vectors
    finally:
        encoder.token_budget = budget
    assert np.abs(split - whole).max() <= 1e-6
    assert all(clock.seconds[s] > 0 for s in ("build inputs", "model", "pool and copy back"))


def test_mean_pooling_in_half_precision_stays_in_range() -> None:
    """States of 1,000 over 512 tokens: summed first, fp16 would overflow to inf."""
    hidden = torch.full((2, 512, 8), 1000.0, dtype=torch.float16)
    mask = torch.ones((2, 512), dtype=torch.long)
    mask[1, 100:] = 0
    pooled = pool(hidden, mask, "mean")
    assert pooled.dtype == torch.float16
    assert torch.equal(pooled.float(), torch.full((2, 8), 1000.0))
