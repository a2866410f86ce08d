"""Cutting inputs into forward passes: sort by length, fill a padded-token budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices of `lengths`, grouped into batches, longest first.

    Each batch is padded to its longest member, so sorting by length keeps
    padding small, and `rows * longest <= token_budget` keeps the memory of every
    forward pass about the same. An input longer than the budget gets a batch
    of its own.
    """
    if token_budget < 1 or max_rows < 1:
        raise ValueError("token_budget and max_rows must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first: the batch's padded length is that of its first member.
        longest = lengths[current[0]] if current else lengths[index]
        if current and (longest * (len(current) + 1) > token_budget or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the model computes for `batches`, padding included."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
