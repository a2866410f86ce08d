"""Threshold calibration: similarity of nearest rows against that of random rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg


@dataclass(frozen=True)
class Percentiles:
    measure: str  # top1 | topk | random
    n: int
    p10: float
    p50: float
    p90: float
    p99: float


def similarity_profile(
    conn: psycopg.Connection[Any],
    name: str,
    queries: Sequence[np.ndarray] | None = None,
    *,
    sample: int = 100,
    k: int = 10,
) -> dict[str, Percentiles]:
    rows = conn.execute(
        "SELECT * FROM rowembed.similarity_profile(%s, %s, %s, %s)",
        [name, None if queries is None else list(queries), sample, k],
    ).fetchall()
    return {r[0]: Percentiles(*r) for r in rows}


def suggest_min_similarity(profile: dict[str, Percentiles]) -> float:
    """Above the 99th percentile of unrelated pairs: a match is unlikely to be chance."""
    return math.ceil(profile["random"].p99 * 100) / 100
