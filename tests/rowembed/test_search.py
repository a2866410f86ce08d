"""The Python search path's own errors (rowembed/_search.py)."""

from __future__ import annotations

import time

import pytest

from rowembed import WorkerModels
from rowembed.settings import Settings
from rowembed.workers.celery_app import make_app

from ..conftest import MODEL


def test_worker_models_with_redis_down_fail_within_seconds_naming_it() -> None:
    models = WorkerModels(make_app(Settings(redis_url="redis://:secret@127.0.0.1:1/0")), timeout=2)
    started = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"cannot reach Redis at redis://:\*\*@127.0.0.1:1/0"
    ) as e:
        models.encode_query(MODEL, "text")
    assert "secret" not in str(e.value)
    assert time.monotonic() - started < 15  # 20 reconnects took 19 s
