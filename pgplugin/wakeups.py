"""Wake-ups: rowembed's SQL sends NOTIFY on one channel when a queue gains entries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

# pg_notify(CHANNEL, 'N'): rows of vectorizer N changed; 'N backfill': a backfill
# queued rows of N (no hurry: behind live changes); 'query' / 'rerank': a SQL
# caller waits for a query vector (rowembed.query_request) or rerank scores.
CHANNEL = "rowembed"


def listen(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


def woken(notifies: Iterable[psycopg.Notify]) -> dict[int, bool]:
    """A burst of notifications as {vectorizer id: whether a live change is among them}."""
    found: dict[int, bool] = {}
    for note in notifies:
        key, _, kind = note.payload.partition(" ")
        if key.isdigit():
            found[int(key)] = found.get(int(key), False) or kind != "backfill"
    return found


def callers_waiting(notifies: Iterable[psycopg.Notify]) -> set[str]:
    """Which kinds of SQL callers' requests ('query', 'rerank') the notifications announce."""
    return {note.payload for note in notifies} & {"query", "rerank"}
