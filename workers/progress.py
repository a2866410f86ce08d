"""A long row's chunks embedded so far, kept by the worker process between
tasks: a row with more chunks than a batch holds is embedded in slices, and
a task that ends (its time spent, or a time limit) loses at most the slice
in flight. Knows neither Celery nor the database."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RowProgress:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # chunk index -> vector
    tokens: int = 0
    padded_tokens: int = 0


class ChunkProgress:
    """Per row version (the caller's key: vectorizer, queue entry, text hash,
    chunk plan), at most `rows` rows, least recently used forgotten first: the
    rows a process is in the middle of are few, one at a time in practice."""

    def __init__(self, rows: int = 8) -> None:
        self.rows = rows
        self._rows: OrderedDict[Hashable, RowProgress] = OrderedDict()

    def of(self, key: Hashable) -> RowProgress:
        row = self._rows.pop(key, None) or RowProgress()
        self._rows[key] = row
        while len(self._rows) > self.rows:
            self._rows.popitem(last=False)
        return row

    def forget(self, key: Hashable) -> None:
        self._rows.pop(key, None)


def slices(sizes: Sequence[int], budget: int) -> list[range]:
    """Consecutive ranges of inputs whose `sizes` (characters) sum to at most
    `budget`, at least one input each."""
    out, first, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > first and total + size > budget:
            out.append(range(first, i))
            first, total = i, 0
        total += size
    if first < len(sizes):
        out.append(range(first, len(sizes)))
    return out
