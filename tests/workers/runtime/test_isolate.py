"""Poison isolation is pure logic: a scripted encode function is enough here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from rowembed.workers.runtime import Encoded, ModelNotFoundError
from rowembed.workers.runtime.isolate import encode_isolating


def scripted(bad: set[str], calls: list[int]) -> Callable[[Sequence[str]], Encoded]:
    def encode(texts: Sequence[str]) -> Encoded:
        calls.append(len(texts))
        if bad.intersection(texts):
            raise ValueError(f"cannot embed {sorted(bad.intersection(texts))}")
        vectors = np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)
        return Encoded(vectors, truncated=0, tokens=len(texts), padded_tokens=len(texts))

    return encode


def test_good_inputs_are_embedded_and_bad_ones_named() -> None:
    texts = [f"t{i}" for i in range(64)]
    calls: list[int] = []
    result = encode_isolating(scripted({"t5", "t40"}, calls), texts)
    assert sorted(result.errors) == [5, 40]
    assert result.errors[5] == "ValueError: cannot embed ['t5']"
    assert sorted(result.vectors) == [i for i in range(64) if i not in (5, 40)]
    assert result.vectors[12][0] == len("t12")
    assert result.tokens == 62
    assert result.calls == len(calls) <= 1 + 2 * 2 * 6  # about 2*log2(n) per bad input


def test_no_failure_is_one_call() -> None:
    calls: list[int] = []
    result = encode_isolating(scripted(set(), calls), ["a", "b", "c"])
    assert calls == [3] and not result.errors


def test_a_systemic_failure_fails_every_input_without_splitting() -> None:
    calls = 0

    def missing(texts: Sequence[str]) -> Encoded:
        nonlocal calls
        calls += 1
        raise ModelNotFoundError("model 'x' is not here")

    result = encode_isolating(missing, ["a", "b", "c", "d"])
    assert calls == 1
    assert result.errors == dict.fromkeys(range(4), "ModelNotFoundError: model 'x' is not here")
    assert result.vectors == {}


@pytest.mark.parametrize("n", [1, 2, 7])
def test_every_input_bad(n: int) -> None:
    texts = [f"x{i}" for i in range(n)]
    result = encode_isolating(scripted(set(texts), []), texts)
    assert sorted(result.errors) == list(range(n))


def test_non_finite_vectors_are_errors_of_their_input() -> None:
    def encode(texts: Sequence[str]) -> Encoded:
        vectors = np.array([[np.nan if t == "bad" else 1.0, 0.0] for t in texts], np.float32)
        return Encoded(vectors, truncated=0, tokens=len(texts), padded_tokens=len(texts))

    result = encode_isolating(encode, ["a", "bad", "c"])
    assert sorted(result.vectors) == [0, 2]
    assert result.errors == {1: "ValueError: the model returned non-finite values"}


def test_an_abort_exception_ends_the_batch_instead_of_being_bisected() -> None:
    """A time limit met in the middle of a model call says nothing of the inputs:
    bisecting it would spend the rest of the budget on calls that time out too."""

    class Deadline(Exception):
        pass

    calls: list[list[str]] = []

    def encode(texts: list[str]) -> Encoded:
        calls.append(texts)
        raise Deadline("soft time limit")

    with pytest.raises(Deadline):
        encode_isolating(encode, ["a", "b", "c", "d"], abort_on=(Deadline,))
    assert calls == [["a", "b", "c", "d"]]
