"""Query texts and rerank requests from SQL callers (rowembed.search_text,
embed_query, rerank): the worker's side. The protocol is SQL's
(sql/095-query-embeddings.sql), called by both sides; row-level security keeps
a worker role to the requests of the vectorizers it works."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from ._call import call, scalar


@dataclass(frozen=True)
class QueryRequest:
    vectorizer_id: int
    model: str
    text_hash: bytes
    text: str


@dataclass(frozen=True)
class QueryAnswer:
    vectorizer_id: int
    text_hash: bytes
    vector: np.ndarray | None
    error: str | None = None


def take_query_requests(conn: psycopg.Connection[Any], limit: int = 256) -> list[QueryRequest]:
    """Remove up to `limit` waiting requests, in the caller's transaction: if it
    rolls back (the worker died), they wait again."""
    rows = call(conn, "take_query_requests", max_requests=limit).fetchall()
    return [QueryRequest(*row) for row in rows]


def store_query_answers(conn: psycopg.Connection[Any], answers: Sequence[QueryAnswer]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "SELECT rowembed.answer_query(%s::int, %s::bytea, %s::real[], %s::text)",
            [
                (
                    a.vectorizer_id,
                    a.text_hash,
                    None if a.vector is None else a.vector.astype(np.float32).tolist(),
                    a.error,
                )
                for a in answers
            ],
        )


def prune_query_cache(conn: psycopg.Connection[Any], keep: int) -> int:
    """Drop the oldest cached query vectors beyond `keep`; returns how many."""
    return int(scalar(conn, "prune_query_cache", keep=keep))


def query_requests_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(scalar(conn, "query_requests_waiting"))


@dataclass(frozen=True)
class RerankRequest:
    id: Any  # uuid
    vectorizer_id: int
    model: str
    query: str
    passages: list[str]


def take_rerank_requests(conn: psycopg.Connection[Any], limit: int = 16) -> list[RerankRequest]:
    """Unanswered rerank requests, locked until the caller's transaction ends."""
    rows = call(conn, "take_rerank_requests", max_requests=limit).fetchall()
    return [RerankRequest(*row) for row in rows]


def answer_rerank_request(
    conn: psycopg.Connection[Any], id: Any, scores: np.ndarray | None, error: str | None = None
) -> None:
    call(
        conn,
        "answer_rerank",
        id=id,
        scores=None if scores is None else scores.astype(np.float32).tolist(),
        error=error,
    )


def rerank_requests_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(scalar(conn, "rerank_requests_waiting"))


def loopback_problem(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """Why search_text's loopback session cannot open here, and the fix; None
    when nothing is known to stop it."""
    problem, fix = call(conn, "_loopback_problem").fetchone() or (None, None)
    return None if problem is None else (problem, fix)
