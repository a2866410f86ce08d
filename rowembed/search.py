"""Search from Python: embed the query, retrieve with the SQL API, optionally rerank.

The models run in-process (`LocalModels`) or on the workers (`WorkerModels`,
Celery tasks on the query and rerank queues, so a busy backfill does not delay
them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psycopg
from psycopg import sql

from rowembed.pgplugin.vectorizers import Vectorizer

if TYPE_CHECKING:
    from rowembed.workers.runtime import Encoder, Reranker


@dataclass(frozen=True)
class Hit:
    similarity: float
    row: dict[str, Any]
    rerank_score: float | None = None


class Models(Protocol):
    def embed_query(self, model: str, text: str) -> np.ndarray: ...

    def rerank(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray: ...


class LocalModels:
    """Loads the models in this process (first use takes seconds)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._encoders: dict[str, Encoder] = {}
        self._rerankers: dict[str, Reranker] = {}

    def embed_query(self, model: str, text: str) -> np.ndarray:
        from rowembed.workers.runtime import Encoder

        if model not in self._encoders:
            self._encoders[model] = Encoder.load(model, device=self.device)
        return self._encoders[model].encode([text]).vectors[0]

    def rerank(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray:
        from rowembed.workers.runtime import Reranker

        if model not in self._rerankers:
            self._rerankers[model] = Reranker.load(model, device=self.device)
        return self._rerankers[model].score(query, passages).scores


class WorkerModels:
    """Asks the workers (Celery tasks `rowembed.embed_query` and `rowembed.rerank`)."""

    def __init__(self, app: Any, timeout: float = 60.0) -> None:
        self.app = app
        self.timeout = timeout

    def embed_query(self, model: str, text: str) -> np.ndarray:
        result = self.app.send_task("rowembed.embed_query", args=[model, text])
        return np.asarray(result.get(timeout=self.timeout), dtype=np.float32)

    def rerank(self, model: str, query: str, passages: Sequence[str]) -> np.ndarray:
        result = self.app.send_task("rowembed.rerank", args=[model, query, list(passages)])
        return np.asarray(result.get(timeout=self.timeout), dtype=np.float32)


def embed_query(encoder: Encoder, vectorizer: Vectorizer, text: str) -> np.ndarray:
    """The query vector, with the vectorizer's query instruction (the bge prefix)."""
    return encoder.encode([vectorizer.query_instruction + text]).vectors[0]


def search_vector(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    query: np.ndarray,
    *,
    k: int = 10,
    min_similarity: float | None = None,
    filter: dict[str, Any] | None = None,
) -> list[Hit]:
    """rowembed.search() for one vectorizer; rows come back as dicts."""
    statement = sql.SQL(
        "SELECT s.similarity, to_jsonb(s.item)"
        " FROM rowembed.search(NULL::{}, %s, %s, %s, %s, %s::jsonb) s"
    ).format(vectorizer.source)
    params = [
        query,
        k,
        min_similarity,
        vectorizer.name,
        None if filter is None else json.dumps(filter),
    ]
    return [Hit(similarity, row) for similarity, row in conn.execute(statement, params).fetchall()]


def row_text(vectorizer: Vectorizer, row: dict[str, Any]) -> str:
    """The text the vectorizer embeds for `row` (its columns joined like concat_ws)."""
    values = [row.get(c) for c in vectorizer.text_columns]
    return vectorizer.separator.join(
        v if isinstance(v, str) else json.dumps(v) for v in values if v is not None
    )


def search(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    text: str,
    models: Models,
    *,
    k: int = 10,
    min_similarity: float | None = None,
    filter: dict[str, Any] | None = None,
    rerank: bool = False,
    candidates: int = 100,
    rerank_model: str | None = None,
) -> list[Hit]:
    """Embed `text` (with the query instruction), retrieve; with `rerank`, retrieve
    `candidates` rows and return the `k` the cross-encoder scores highest."""
    query = models.embed_query(vectorizer.model, vectorizer.query_instruction + text)
    hits = search_vector(
        conn,
        vectorizer,
        query,
        k=max(k, candidates) if rerank else k,
        min_similarity=min_similarity,
        filter=filter,
    )
    if not rerank or not hits:
        return hits
    scores = models.rerank(
        rerank_model or vectorizer.rerank_model, text, [row_text(vectorizer, h.row) for h in hits]
    )
    ranked = sorted(zip(hits, scores, strict=True), key=lambda pair: -float(pair[1]))
    return [Hit(h.similarity, h.row, float(score)) for h, score in ranked[:k]]
