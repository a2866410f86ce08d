"""A worker keeps a bounded number of models loaded, the least recently used going first."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import psycopg
import pytest

from rowembed.pgplugin import create_vectorizer
from rowembed.settings import Settings
from rowembed.workers.state import MAX_LOADED_MODELS, WorkerState, _most_recent

from ..conftest import MODEL


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


def test_a_worker_says_at_start_which_models_are_not_on_this_machine(
    own_db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """One line per missing model (offline here: its rows wait), none for a model
    that is here."""
    own_db.execute("CREATE TABLE here (id int PRIMARY KEY, body text)")
    own_db.execute("CREATE TABLE gone (id int PRIMARY KEY, body text)")
    create_vectorizer(own_db, "here", ["body"], model=MODEL)
    create_vectorizer(own_db, "gone", ["body"], model="no-such-org/no-such-model", dimensions=8)
    state = WorkerState(Settings(database_url=own_db.info.dsn, device="cpu"))
    with caplog.at_level(logging.INFO, logger="rowembed.workers.state"):
        state.say_which_models_are_missing()
    assert [r.getMessage() for r in caplog.records] == [
        "model no-such-org/no-such-model is not on this machine and downloads are off"
        " (HF_HUB_OFFLINE): its vectorizers' rows wait for it (rowembed status shows it)"
    ]
