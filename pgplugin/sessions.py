"""What a worker and a dispatcher need of their database sessions, checked at
start: sessions of their own. A worker's claims are session advisory locks
(they end with its session, so a dead worker's rows come back at once) and the
dispatcher LISTENs; a pooler that hands one server session to whichever client
runs a transaction (PgBouncer's transaction or statement mode) breaks both.
Applications may use such a pooler: capture and search need no session state."""

from __future__ import annotations

import psycopg

PID = "SELECT pg_backend_pid()"


class SharedSessions(RuntimeError):
    """Two connections to one URL ran on the same server session."""


def require_own_sessions(url: str, who: str) -> None:
    """Raises SharedSessions when two connections to `url`, both open, run on the
    same server process: a transaction pooler is in between (it gives the idle
    client's server session to the next transaction)."""
    with (
        psycopg.connect(url, autocommit=True) as first,
        psycopg.connect(url, autocommit=True) as second,
    ):
        first_pid = first.execute(PID).fetchone()
        second_pid = second.execute(PID).fetchone()
    if first_pid == second_pid:
        raise SharedSessions(
            f"{who}: ROWEMBED_DATABASE_URL reaches PostgreSQL through a pooler in transaction"
            " (or statement) mode: two of its connections ran on one server session. The"
            f" {who} needs sessions of its own (session advisory locks, LISTEN): point it at"
            " PostgreSQL directly, or at a session-mode pool; applications may keep the pooler"
        )
