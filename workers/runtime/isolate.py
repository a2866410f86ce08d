"""Embedding a batch so that inputs that make the model fail do not sink the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from .encoder import Encoded
from .models import ModelNotFoundError


class DimensionMismatch(RuntimeError):
    """The model's output size differs from the column's."""


# Failures of the model as a whole, not of an input: splitting the batch cannot help.
SYSTEMIC = (ModelNotFoundError, DimensionMismatch, ImportError)


@dataclass
class Isolated:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # input index -> vector
    errors: dict[int, str] = field(default_factory=dict)  # input index -> error
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    calls: int = 0
    systemic: str | None = None  # the model as a whole failed (SYSTEMIC): why


Item = TypeVar("Item")


def encode_isolating(
    encode: Callable[[list[Item]], Encoded],
    items: Sequence[Item],
    *,
    abort_on: tuple[type[BaseException], ...] = (),
) -> Isolated:
    """Encode `items` (texts, or indices into tokenized inputs); when a call
    fails, bisect to find the inputs that fail.

    One bad input among n costs about 2*log2(n) extra calls; every other input is
    still embedded. A systemic failure is recorded against every input at once.
    `abort_on`: exceptions that are about the caller, not an input (a time limit),
    raised at once rather than bisected.
    """
    result = Isolated()

    def attempt(indices: list[int]) -> None:
        result.calls += 1
        try:
            encoded = encode([items[i] for i in indices])
        except abort_on:
            raise
        except SYSTEMIC as exc:
            raise _Systemic(describe(exc)) from exc
        except Exception as exc:
            if len(indices) == 1:
                result.errors[indices[0]] = describe(exc)
                return
            middle = len(indices) // 2
            attempt(indices[:middle])
            attempt(indices[middle:])
            return
        for index, vector in zip(indices, encoded.vectors, strict=True):
            if np.isfinite(vector).all():
                result.vectors[index] = vector
            else:  # fp16 overflow, or a broken model: storing it would fail the whole write
                result.errors[index] = "ValueError: the model returned non-finite values"
        result.truncated += encoded.truncated
        result.tokens += encoded.tokens
        result.padded_tokens += encoded.padded_tokens

    try:
        attempt(list(range(len(items))))
    except _Systemic as failure:
        why = str(failure)
        return Isolated(
            errors=dict.fromkeys(range(len(items)), why), calls=result.calls, systemic=why
        )
    return result


class _Systemic(Exception):
    pass


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
