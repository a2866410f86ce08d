"""Retrieval quality of held-out (query, answer) pairs: exact top-k by cosine
over a corpus, recall@k and MRR@k. Pure: vectors in, figures out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quality:
    recall: float  # share of queries with an answer in the top k
    mrr: float  # mean reciprocal rank of the first answer in the top k (0 past k)
    k: int


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Indices into `corpus` of each query's k most similar (normalized vectors)."""
    scores = queries @ corpus.T
    k = min(k, corpus.shape[0])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(best, order, axis=1)


def quality(ranked: np.ndarray, answers: Sequence[set[int]], k: int) -> Quality:
    """recall@k and MRR@k of `ranked` (one row of corpus indices per query)."""
    hits, reciprocal = 0, 0.0
    for row, relevant in zip(ranked[:, :k], answers, strict=True):
        ranks = [r for r, index in enumerate(row) if int(index) in relevant]
        if ranks:
            hits += 1
            reciprocal += 1 / (ranks[0] + 1)
    n = max(1, len(answers))
    return Quality(hits / n, reciprocal / n, k)
