"""Celery tasks: thin wrappers around the pipeline. Heavy imports (torch) happen
inside the task, after the pool has forked, so CUDA initialises in the child."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from .celery_app import app
from .state import worker_state

log = logging.getLogger(__name__)


@app.task(name="rowembed.embed", bind=True)
def embed(self: Any, vectorizer_id: int) -> dict[str, Any]:
    """Drain vectorizer `vectorizer_id`'s queue for a while; hand the rest on."""
    from rowembed.pgplugin.vectorizers import VectorizerNotFound

    from .pipeline import drain

    state = worker_state()
    with state.connection() as conn:
        try:
            vectorizer = state.vectorizer(conn, vectorizer_id)
        except VectorizerNotFound:
            log.info("vectorizer %s no longer exists; hint dropped", vectorizer_id)
            return {}
        encoder = state.encoder(vectorizer.model)
        report, more = drain(
            conn,
            vectorizer,
            encoder,
            limit=state.settings.batch_rows,
            lease_seconds=state.settings.lease_seconds,
            time_budget=state.settings.task_seconds,
        )
    if more:
        self.apply_async((vectorizer_id,))
    if report.claimed:
        log.info("vectorizer %s: %s", vectorizer.name, report)
    return asdict(report)
