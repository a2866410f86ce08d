"""Answering SQL callers (rowembed.search_text, embed_query, rerank): embed the
waiting query texts, grouped by model, into the cache the callers poll, and
score the waiting rerank requests. Each request names a vectorizer, whose model
(written only through rowembed's checked functions) answers it: a caller never
names a model. A model that fails answers its requests with the error, which
the caller raises."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import psycopg

from rowembed.pgplugin.queries import (
    QueryAnswer,
    answer_rerank_request,
    prune_query_cache,
    store_query_answers,
    take_query_requests,
    take_rerank_requests,
)

from .pipeline import TextEncoder
from .runtime import Reranker


def answer_queries(
    conn: psycopg.Connection[Any], encoder_for: Callable[[str], TextEncoder], cache_rows: int
) -> int:
    """Answers every waiting request (in rounds); returns how many."""
    answered = 0
    while True:
        with conn.transaction():
            requests = take_query_requests(conn)
            if not requests:
                break
            answers: list[QueryAnswer] = []
            by_model = itertools.groupby(sorted(requests, key=lambda r: r.model), lambda r: r.model)
            for model, group in by_model:
                batch = list(group)
                try:
                    vectors = encoder_for(model).encode([r.text for r in batch]).vectors
                except Exception as exc:  # a missing model, a bad text: the caller says so
                    error = f"{type(exc).__name__}: {str(exc).strip()[:1000]}"
                    answers += [
                        QueryAnswer(r.vectorizer_id, r.text_hash, None, error) for r in batch
                    ]
                else:
                    answers += [
                        QueryAnswer(r.vectorizer_id, r.text_hash, v)
                        for r, v in zip(batch, vectors, strict=True)
                    ]
            store_query_answers(conn, answers)
        answered += len(answers)
    if answered:
        prune_query_cache(conn, cache_rows)
    return answered


def answer_reranks(conn: psycopg.Connection[Any], reranker_for: Callable[[str], Reranker]) -> int:
    """Scores every waiting rerank request (in rounds); returns how many."""
    answered = 0
    while True:
        with conn.transaction():
            requests = take_rerank_requests(conn)
            for r in requests:
                try:
                    scores = reranker_for(r.model).score(r.query, r.passages).scores
                except Exception as exc:  # a missing model: the caller says so
                    answer_rerank_request(conn, r.id, None, f"{type(exc).__name__}: {exc}"[:1000])
                else:
                    answer_rerank_request(conn, r.id, scores)
        if not requests:
            return answered
        answered += len(requests)
