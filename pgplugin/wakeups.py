"""Wake-ups: how the dispatcher learns that a queue gained entries.

Live changes are found by polling (`change_clock`, then `logged_changes` while
it moves): the capture triggers send no NOTIFY, which would serialize the
application's commits.
Management calls (a backfill started, failed rows retried) and SQL callers
waiting for a query vector or rerank scores still NOTIFY on one channel: those
are not the application's writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from ._call import call

# pg_notify(CHANNEL, 'N'): rows of vectorizer N were queued by a management call;
# 'N backfill': a backfill queued rows of N (no hurry: behind live changes);
# 'query' / 'rerank': a SQL caller waits for a query vector
# (rowembed.query_request) or rerank scores; 'train': a fine-tuning job waits.
CHANNEL = "rowembed"


class ChangeClock(NamedTuple):
    """rowembed.change_clock(): the last value drawn from change_seq, and the
    current snapshot's xmin and xmax (transaction ids)."""

    seq: int
    xmin: int
    xmax: int


def change_clock(conn: psycopg.Connection[Any]) -> ChangeClock:
    row = call(conn, "change_clock").fetchone()
    assert row is not None
    return ChangeClock(*row)


def logged_changes(conn: psycopg.Connection[Any]) -> list[int]:
    """The vectorizers whose change log has rows (workers fold them as they claim)."""
    return [vid for (vid,) in call(conn, "vectorizers_with_logged_changes").fetchall()]


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
    """Which kinds of requests ('query', 'rerank', 'train') the notifications announce."""
    return {note.payload for note in notifies} & {"query", "rerank", "train"}
