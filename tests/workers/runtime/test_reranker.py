"""Reranker parity with sentence-transformers' CrossEncoder on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rowembed.workers.runtime import Reranker

QUERY = "how do cats sleep"
PASSAGES = [
    "Cats sleep between twelve and sixteen hours a day.",
    "The stock market closed higher on Friday.",
    "Kittens need more sleep than adult cats, often curled up in warm places.",
    "Un chat dort souvent au soleil.",
    " ".join(f"filler sentence number {i} about nothing in particular." for i in range(120)),
]


@pytest.fixture(scope="module")
def reranker(cross_encoder_dir: Path) -> Reranker:
    return Reranker.load(str(cross_encoder_dir), device="cpu")


def test_scores_match_sentence_transformers_cross_encoder(
    reranker: Reranker, cross_encoder_dir: Path
) -> None:
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(cross_encoder_dir), device="cpu", max_length=reranker.max_length)
    pairs = [(QUERY, p) for p in PASSAGES]
    theirs = reference.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=2)
    ours = reranker.score(QUERY, PASSAGES)
    assert np.abs(ours.scores - theirs).max() <= 1e-5
    sigmoid = reference.predict(pairs, batch_size=16)  # its default activation for one label
    assert np.abs(reranker.score(QUERY, PASSAGES, sigmoid=True).scores - sigmoid).max() <= 1e-5


def test_long_pairs_are_truncated_and_counted(reranker: Reranker) -> None:
    result = reranker.score(QUERY, PASSAGES)
    assert result.truncated == 1
    assert result.tokens <= reranker.max_length * len(PASSAGES)


def test_order_of_inputs_does_not_change_scores(reranker: Reranker) -> None:
    forward = reranker.score(QUERY, PASSAGES).scores
    backward = reranker.score(QUERY, PASSAGES[::-1]).scores[::-1]
    assert np.abs(forward - backward).max() <= 1e-5


def test_no_passages(reranker: Reranker) -> None:
    assert reranker.score(QUERY, []).scores.shape == (0,)


def test_a_huge_passage_is_cut_before_it_is_tokenized(reranker: Reranker) -> None:
    huge = "word " * 2_000_000  # 10 MB: tokenizing it whole takes seconds and gigabytes
    seen: list[int] = []
    tokenizer = reranker.tokenizer

    def recording(queries: list[str], passages: list[str], **kwargs: object) -> object:
        seen.extend(len(p) for p in passages)
        return tokenizer(queries, passages, **kwargs)  # type: ignore[operator]

    reranker.tokenizer = recording
    try:
        result = reranker.score(QUERY, [huge])
    finally:
        reranker.tokenizer = tokenizer
    assert seen == [reranker.max_chars]
    assert result.truncated == 1
    assert np.abs(result.scores - reranker.score(QUERY, [huge[:20_000]]).scores).max() <= 1e-5
