"""Search from Python: embed the query, retrieve with the SQL API, optionally rerank.

The models run in-process (`LocalModels`) or on the workers (`WorkerModels`,
Celery tasks on the query and rerank queues, so a busy backfill does not delay
them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psycopg

from rowembed.pgplugin.search import Hit, search_text, search_vector
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.queues import QUERY_QUEUE, RERANK_QUEUE

if TYPE_CHECKING:
    from celery import Celery

    from rowembed.workers.runtime import Encoder, Reranker


class Models(Protocol):
    """Where the query embedding and the rerank scores come from."""

    def encode_query(self, model: str, text: str) -> np.ndarray: ...

    def score_passages(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray: ...


class LocalModels:
    """Loads the models in this process (first use takes seconds)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._encoders: dict[str, Encoder] = {}
        self._rerankers: dict[str, Reranker] = {}

    def encode_query(self, model: str, text: str) -> np.ndarray:
        from rowembed.workers.runtime import Encoder

        if model not in self._encoders:
            self._encoders[model] = Encoder.load(model, device=self.device)
        return self._encoders[model].encode([text]).vectors[0]

    def score_passages(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray:
        from rowembed.workers.runtime import Reranker

        if model not in self._rerankers:
            self._rerankers[model] = Reranker.load(model, device=self.device)
        return self._rerankers[model].score(query, passages).scores


class WorkerModels:
    """Asks the workers (Celery tasks `rowembed.embed_query` and `rowembed.rerank`).
    Without `app`, one is made from the environment (ROWEMBED_REDIS_URL) on first use.
    A request no worker answers within `timeout` seconds fails saying so, and
    expires in the broker (no worker picks it up later)."""

    def __init__(self, app: Celery | None = None, timeout: float = 15.0) -> None:
        self._app = app
        self.timeout = timeout

    @property
    def app(self) -> Celery:
        if self._app is None:
            from rowembed.workers.celery_app import make_app

            self._app = make_app()
        if "retry_policy" not in self._app.conf.result_backend_transport_options:
            # Redis down is an error within a second or two, not after the
            # result store's 20 reconnects (19 s).
            self._app.conf.result_backend_transport_options = {
                **self._app.conf.result_backend_transport_options,
                "retry_policy": {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            }
        return self._app

    def encode_query(self, model: str, text: str) -> np.ndarray:
        return self._ask("rowembed.embed_query", [model, text], QUERY_QUEUE)

    def score_passages(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray:
        return self._ask("rowembed.rerank", [model, query, list(passages)], RERANK_QUEUE)

    def _ask(self, task: str, args: list[Any], queue: str) -> np.ndarray:
        from celery.exceptions import TimeoutError as CeleryTimeout
        from kombu.utils.url import maybe_sanitize_url

        try:
            result = self.app.send_task(task, args=args, expires=self.timeout, retry=False)
        except Exception as exc:  # kombu raises its own and the socket's errors
            url = maybe_sanitize_url(self.app.conf.broker_url)
            raise WorkerUnavailable(
                f"cannot reach Redis at {url} ({_first_line(exc)}): start it, or set"
                " ROWEMBED_REDIS_URL, or search with the models in this process (--local)"
            ) from exc
        try:
            return np.asarray(result.get(timeout=self.timeout), dtype=np.float32)
        except CeleryTimeout:
            raise WorkerUnavailable(
                f"no worker answered on the {queue} queue within {self.timeout:g} s: start"
                " one (`rowembed worker`, whose --queues include it) or search with the"
                " models in this process (--local)"
            ) from None
        except Exception as exc:  # the worker's error, rebuilt by Celery
            raise WorkerUnavailable(f"the worker failed: {_first_line(exc)}") from exc


class WorkerUnavailable(RuntimeError):
    """No worker answered, or the one that did failed."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def embed_query(encoder: Encoder, vectorizer: Vectorizer, text: str) -> np.ndarray:
    """The query vector, with the vectorizer's query instruction (the bge prefix)."""
    return encoder.encode([vectorizer.query_instruction + text]).vectors[0]


def search(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    text: str,
    models: Models | None = None,
    *,
    k: int = 10,
    min_similarity: float | None = None,
    filter: dict[str, Any] | None = None,
    rerank: bool = False,
    candidates: int = 100,
    rerank_model: str | None = None,
    timeout: float | None = None,
) -> list[Hit]:
    """Embed `text` (with the query instruction), retrieve; with `rerank`, retrieve
    `candidates` rows and return the `k` the cross-encoder scores highest.
    Without `models`, through rowembed.search_text() in the database (the
    workers' query and rerank queues, the query cache: the path SQL callers
    take; the vectorizer's rerank model); with `models`, here or over Celery."""
    if models is None:
        if rerank_model is not None:
            raise ValueError("rerank_model needs models: the database path uses the vectorizer's")
        return search_text(
            conn, vectorizer, text, k=k, min_similarity=min_similarity, filter=filter,
            rerank=rerank, candidates=candidates, timeout=timeout,
        )  # fmt: skip
    if not text.strip():  # as rowembed.search_text() refuses it
        raise ValueError("rowembed: the query text is empty")
    query = models.encode_query(vectorizer.model, vectorizer.query_instruction + text)
    hits = search_vector(
        conn,
        vectorizer,
        query,
        k=max(k, candidates) if rerank else k,
        min_similarity=min_similarity,
        filter=filter,
        texts=rerank,
    )
    if not rerank or not hits:
        return hits
    scores = models.score_passages(
        rerank_model or vectorizer.rerank_model, text, [h.text or "" for h in hits]
    )
    ranked = sorted(zip(hits, scores, strict=True), key=lambda pair: -float(pair[1]))
    return [Hit(h.similarity, h.row, h.text, float(score)) for h, score in ranked[:k]]
