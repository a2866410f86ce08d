"""A worker keeps a bounded number of models loaded, the least recently used going first."""

from __future__ import annotations

from collections import OrderedDict

from rowembed.workers.state import MAX_LOADED_MODELS, _most_recent


def test_the_least_recently_used_model_goes_first() -> None:
    loaded: OrderedDict[str, int] = OrderedDict()
    for n in range(MAX_LOADED_MODELS):
        loaded[f"m{n}"] = n
        _most_recent(loaded, f"m{n}")
    assert _most_recent(loaded, "m0") == 0  # used again: now the most recent
    loaded["new"] = -1
    _most_recent(loaded, "new")
    assert len(loaded) == MAX_LOADED_MODELS
    assert "m1" not in loaded and "m0" in loaded and "new" in loaded
