"""Search from Python: embed a query with the vectorizer's model, ask the SQL API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

from rowembed.pgplugin.vectorizers import Vectorizer

if TYPE_CHECKING:
    from rowembed.workers.runtime import Encoder


@dataclass(frozen=True)
class Hit:
    similarity: float
    row: dict[str, Any]


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
) -> list[Hit]:
    """rowembed.search() for one vectorizer; rows come back as dicts."""
    statement = sql.SQL(
        "SELECT s.similarity, to_jsonb(s.item) FROM rowembed.search(NULL::{}, %s, %s, %s, %s) s"
    ).format(vectorizer.source)
    rows = conn.execute(statement, [query, k, min_similarity, vectorizer.name]).fetchall()
    return [Hit(similarity, row) for similarity, row in rows]
