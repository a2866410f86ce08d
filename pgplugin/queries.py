"""Query texts from SQL callers (rowembed.search_text, embed_query): the worker's
side. Requests wait in rowembed.query_request; answers go to rowembed.query_cache
(sql/095-query-embeddings.sql is the caller's side)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg


@dataclass(frozen=True)
class QueryRequest:
    model: str
    text_hash: bytes
    text: str


@dataclass(frozen=True)
class QueryAnswer:
    model: str
    text_hash: bytes
    vector: np.ndarray | None
    error: str | None = None


def served_models(conn: psycopg.Connection[Any]) -> set[str]:
    """The models and rerank models of the database's vectorizers: the only ones
    a worker loads for SQL callers (who name a model string, and could name any
    path or hub id)."""
    rows = conn.execute(
        "SELECT model FROM rowembed.vectorizer UNION SELECT rerank_model FROM rowembed.vectorizer"
    ).fetchall()
    return {model for (model,) in rows}


def take_query_requests(conn: psycopg.Connection[Any], limit: int = 256) -> list[QueryRequest]:
    """Remove up to `limit` waiting requests, in the caller's transaction: if it
    rolls back (the worker died), they wait again."""
    rows = conn.execute(
        """DELETE FROM rowembed.query_request AS r USING (
               SELECT model, text_hash FROM rowembed.query_request
               ORDER BY requested_at LIMIT %s FOR UPDATE SKIP LOCKED) AS taken
           WHERE (r.model, r.text_hash) = (taken.model, taken.text_hash)
           RETURNING r.model, r.text_hash, r.text""",
        [limit],
    ).fetchall()
    return [QueryRequest(*row) for row in rows]


def store_query_answers(conn: psycopg.Connection[Any], answers: Sequence[QueryAnswer]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO rowembed.query_cache AS c (model, text_hash, embedding, error)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (model, text_hash) DO UPDATE
                  SET embedding = excluded.embedding, error = excluded.error,
                      created_at = now()""",
            [
                (
                    a.model,
                    a.text_hash,
                    None if a.vector is None else a.vector.astype(np.float32).tolist(),
                    a.error,
                )
                for a in answers
            ],
        )


def prune_query_cache(conn: psycopg.Connection[Any], keep: int) -> int:
    """Drop the oldest cached query vectors beyond `keep`; returns how many."""
    return conn.execute(
        """DELETE FROM rowembed.query_cache WHERE created_at < (
               SELECT created_at FROM rowembed.query_cache
               ORDER BY created_at DESC OFFSET %s LIMIT 1)""",
        [max(keep - 1, 0)],
    ).rowcount


def query_requests_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT FROM rowembed.query_request)").fetchone()[0])  # type: ignore[index]


@dataclass(frozen=True)
class RerankRequest:
    id: Any  # uuid
    model: str
    query: str
    passages: list[str]


def take_rerank_requests(conn: psycopg.Connection[Any], limit: int = 16) -> list[RerankRequest]:
    """Unanswered rerank requests, locked until the caller's transaction ends."""
    rows = conn.execute(
        """SELECT id, model, query, passages FROM rowembed.rerank_request
           WHERE scores IS NULL AND error IS NULL
           ORDER BY requested_at LIMIT %s FOR UPDATE SKIP LOCKED""",
        [limit],
    ).fetchall()
    return [RerankRequest(*row) for row in rows]


def answer_rerank_request(
    conn: psycopg.Connection[Any], id: Any, scores: np.ndarray | None, error: str | None = None
) -> None:
    conn.execute(
        "UPDATE rowembed.rerank_request SET scores = %s, error = %s WHERE id = %s",
        [None if scores is None else scores.astype(np.float32).tolist(), error, id],
    )


def rerank_requests_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT FROM rowembed.rerank_request"
            " WHERE scores IS NULL AND error IS NULL)"
        ).fetchone()[0]  # type: ignore[index]
    )
