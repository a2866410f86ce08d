"""The demo's worker stays out of the demo's own output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rowembed.dev.demo import start_worker
from rowembed.dev.embedded import EmbeddedRedis

from ..conftest import wait_until


def test_the_demo_worker_prints_nothing_into_the_progress_output(
    database_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()
    log = tmp_path / "worker.log"
    env = {**os.environ, "ROWEMBED_DATABASE_URL": database_url, "ROWEMBED_REDIS_URL": redis.url}
    worker = start_worker(env, log)
    try:
        # Celery prints its banner (the queues, the node name) once it starts.
        wait_until(lambda: b"[queues]" in log.read_bytes(), timeout=60, interval=0.2)
    finally:
        worker.terminate()
        worker.wait(30)
        redis.remove()
    out, err = capfd.readouterr()
    assert "celery@" not in out + err
    assert "celery@" in log.read_text()
