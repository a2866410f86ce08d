"""Fine-tuning's reads from the database: the (query, key) pairs a SELECT
gives, the texts a vectorizer embeds for rows, and hard negatives ranked by
the vectorizer's own index (its current model's embeddings)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .vectorizers import Vectorizer

_TEXT_TYPES = {25, 1043, 1042}  # text, varchar, char


class PairsError(ValueError):
    """The pairs cannot be used as given: one line, with what to change."""


@dataclass(frozen=True)
class Pair:
    query: str
    key: str  # the source row's key, as text


def read_pairs(conn: psycopg.Connection[Any], v: Vectorizer, select: str) -> list[Pair]:
    """The rows of `select`, one SELECT of (query text, key), read in a
    read-only transaction; every key must name a row of the source."""
    if len(v.pk_columns) != 1:
        raise PairsError(f"{v.name}: fine-tuning needs a source key of one column")
    statement = select.strip().rstrip(";")
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            # A subquery holds one SELECT (or VALUES) only: no DML, no second statement.
            cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS pairs").format(sql.SQL(statement)))
            columns = cursor.description or []
            if len(columns) != 2 or columns[0].type_code not in _TEXT_TYPES:
                raise PairsError(
                    "the pairs query must return two columns, the query text and the key of a"
                    f" relevant row of {v.source_table}; it returns"
                    f" ({', '.join(c.name for c in columns)})"
                )
            rows = cursor.fetchall()
            keys = sorted({str(k) for q, k in rows if k is not None})
            missing = [k for (k,) in conn.execute(_MISSING_KEYS.format(_key(v), v.source), [keys])]
    except psycopg.errors.SyntaxError as exc:
        raise PairsError(f"the pairs query must be one SELECT of (query, key): {exc}") from None
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise PairsError(f"the pairs query may only read: {exc}") from None
    if missing:
        raise PairsError(
            f"{len(missing)} keys of the pairs name no row of {v.source_table}"
            f" (e.g. {', '.join(missing[:3])})"
        )
    return [Pair(q, str(k)) for q, k in rows if q and q.strip() and k is not None]


_MISSING_KEYS = sql.SQL(
    "SELECT k FROM unnest(%s::text[]) AS k EXCEPT SELECT {}::text FROM {} ORDER BY 1"
)


def _key(v: Vectorizer) -> sql.Identifier:
    return sql.Identifier(v.pk_columns[0])


def texts_of(conn: psycopg.Connection[Any], v: Vectorizer, keys: Sequence[str]) -> dict[str, str]:
    """What the vectorizer embeds for the rows `keys` (passage instruction
    included; rows with no text left out)."""
    query = sql.SQL(
        "SELECT t.{k}::text, rowembed.embedded_text(t, %s) FROM {src} AS t"
        " JOIN unnest(%s::text[]) AS wanted (key) ON wanted.key = t.{k}::text"
    ).format(k=_key(v), src=v.source)
    found = conn.execute(query, [v.name, list(keys)]).fetchall()
    return {key: text for key, text in found if text is not None}


def sample_keys(conn: psycopg.Connection[Any], v: Vectorizer, count: int, seed: int) -> list[str]:
    """Up to `count` keys of the source, the same for the same seed."""
    query = sql.SQL("SELECT t.{k}::text FROM {src} AS t ORDER BY md5(t.{k}::text || %s) LIMIT %s")
    rows = conn.execute(query.format(k=_key(v), src=v.source), [str(seed), count])
    return [key for (key,) in rows]


def mine_negatives(
    conn: psycopg.Connection[Any],
    v: Vectorizer,
    queries: np.ndarray,
    positives: Sequence[set[str]],
    *,
    count: int,
    ranks: tuple[int, int] = (3, 200),
    seed: int = 0,
) -> list[list[str]]:
    """Per query vector: `count` keys sampled from its ranks `ranks` (1-based,
    inclusive) in the vectorizer's own search, its positives left out. Near
    misses the current model ranks high: what the fine-tuned one must tell apart."""
    first, last = ranks
    search = sql.SQL(
        "SELECT to_jsonb(item) ->> {k} FROM rowembed.search(NULL::{src}, %s, %s, -1)"
    ).format(k=sql.Literal(v.pk_columns[0]), src=v.source)
    rng = random.Random(seed)
    mined = []
    for vector, relevant in zip(queries, positives, strict=True):
        ranked = [key for (key,) in conn.execute(search, [vector, last])]
        window = [key for key in ranked[first - 1 : last] if key not in relevant]
        mined.append(rng.sample(window, min(count, len(window))))
    return mined
