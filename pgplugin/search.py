"""Search and calibration through the SQL API (rowembed.search, similarity_profile)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from ._call import call
from .vectorizers import Vectorizer


@dataclass(frozen=True)
class Hit:
    similarity: float
    row: dict[str, Any]
    text: str | None = None  # the text the vectorizer embedded for the row
    rerank_score: float | None = None


def search_vector(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    query: np.ndarray,
    *,
    k: int = 10,
    min_similarity: float | None = None,
    filter: dict[str, Any] | None = None,
    texts: bool = False,
) -> list[Hit]:
    """rowembed.search() for one vectorizer; rows come back as dicts, and with
    `texts` the text the vectorizer embedded for each (rowembed.embedded_text())."""
    # `source` is polymorphic (a NULL of the table's row type): composed, not bound.
    text = sql.SQL("rowembed.embedded_text(s.item, %(vectorizer)s)") if texts else sql.SQL("NULL")
    statement = sql.SQL(
        "SELECT s.similarity, to_jsonb(s.item), {text} FROM rowembed.search("
        "source => NULL::{source}, query => %(query)s, k => %(k)s,"
        " min_similarity => %(min_similarity)s, vectorizer => %(vectorizer)s,"
        " filter => %(filter)s::jsonb) AS s"
    ).format(text=text, source=vectorizer.source)
    params = {
        "query": query,
        "k": k,
        "min_similarity": min_similarity,
        "vectorizer": vectorizer.name,
        "filter": None if filter is None else json.dumps(filter),
    }
    return [Hit(*row) for row in conn.execute(statement, params).fetchall()]


def search_text(
    conn: psycopg.Connection[Any],
    vectorizer: Vectorizer,
    text: str,
    *,
    k: int = 10,
    min_similarity: float | None = None,
    filter: dict[str, Any] | None = None,
    rerank: bool = False,
    candidates: int = 100,
    timeout: float | None = None,
) -> list[Hit]:
    """rowembed.search_text(): the query embedded (and, with `rerank`, the
    candidates scored) by the workers through the database, the path psql takes."""
    statement = sql.SQL(
        "SELECT s.similarity, to_jsonb(s.item), NULL, s.rerank_score FROM rowembed.search_text("
        "source => NULL::{source}, query => %(query)s, k => %(k)s,"
        " min_similarity => %(min_similarity)s, vectorizer => %(vectorizer)s,"
        " filter => %(filter)s::jsonb, timeout_seconds => %(timeout)s, rerank => %(rerank)s,"
        " candidates => %(candidates)s) AS s"
    ).format(source=vectorizer.source)
    params = {
        "query": text,
        "k": k,
        "min_similarity": min_similarity,
        "vectorizer": vectorizer.name,
        "filter": None if filter is None else json.dumps(filter),
        "timeout": timeout,
        "rerank": rerank,
        "candidates": candidates,
    }
    return [Hit(*row) for row in conn.execute(statement, params).fetchall()]


@dataclass(frozen=True)
class Percentiles:
    measure: str  # top1 | topk | random
    n: int
    p10: float
    p50: float
    p90: float
    p99: float


def similarity_profile(
    conn: psycopg.Connection[Any],
    name: str,
    queries: Sequence[np.ndarray] | None = None,
    *,
    sample: int = 100,
    k: int = 10,
) -> dict[str, Percentiles]:
    """rowembed.similarity_profile(): nearest rows against random rows, by measure."""
    rows = call(
        conn,
        "similarity_profile",
        name=name,
        queries=None if queries is None else list(queries),
        sample=sample,
        k=k,
    ).fetchall()
    return {r[0]: Percentiles(*r) for r in rows}


def set_rescore_factor(conn: psycopg.Connection[Any], factor: int | None) -> None:
    """This session's rowembed.rescore_factor (candidates per result of a binary-
    quantized index); None: back to the default."""
    conn.execute("SELECT set_config('rowembed.rescore_factor', %s, false)", [str(factor or "")])


def suggest_min_similarity(profile: dict[str, Percentiles]) -> float:
    """Above the 99th percentile of unrelated pairs: a match is unlikely to be chance."""
    return math.ceil(profile["random"].p99 * 100) / 100
