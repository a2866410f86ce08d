"""What the Prometheus exporter (`rowembed metrics`) reads beyond status(): queue
lag, recent batches from rowembed.batch_stats, workers seen, live claims."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from ._call import call
from .vectorizers import Vectorizer


@dataclass(frozen=True)
class RecentBatches:
    """A vectorizer's batches that finished within the window, from batch_stats."""

    vectorizer_id: int
    batches: int
    rows: int  # claimed less failed: completed (embedded, unchanged, deleted...)
    tokens: int
    padded_tokens: int
    seconds_p50: float
    seconds_p90: float
    seconds_p99: float
    seconds_max: float


@dataclass(frozen=True)
class WorkerSeen:
    """A worker (host:pid) that logged a batch in the last day (batch_stats' life)."""

    worker: str
    seconds_since_last_batch: float
    batches_last_minute: int


def limit_statements(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Each statement of this session is cancelled after `seconds`."""
    conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(seconds * 1000)}ms"])


def oldest_pending_seconds(conn: psycopg.Connection[Any], vectorizer: Vectorizer) -> float:
    """Age in seconds of the vectorizer's oldest queued change (parked entries
    aside; 0 when none waits): how far its embeddings lag behind its table."""
    row = conn.execute(
        sql.SQL(
            "SELECT coalesce(extract(epoch FROM now() - least("
            "(SELECT min(enqueued_at) FROM {} WHERE failed_at IS NULL),"
            " (SELECT min(logged_at) FROM {})))::float8, 0)"
        ).format(vectorizer.queue, vectorizer.change_log)
    ).fetchone()
    return 0.0 if row is None else float(row[0])


_RECENT_BATCHES = sql.SQL("""
    SELECT vectorizer_id, count(*)::int AS batches,
           coalesce(sum(claimed - failed), 0)::bigint AS rows,
           coalesce(sum(tokens), 0)::bigint AS tokens,
           coalesce(sum(padded_tokens), 0)::bigint AS padded_tokens,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS seconds_p50,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds) AS seconds_p90,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY seconds) AS seconds_p99,
           max(seconds) AS seconds_max
    FROM rowembed.batch_stats
    WHERE finished_at > now() - make_interval(secs => %(window)s)
    GROUP BY vectorizer_id
""")


def recent_batches(
    conn: psycopg.Connection[Any], window_seconds: float
) -> dict[int, RecentBatches]:
    """Per vectorizer id, its batches of the last `window_seconds`."""
    with conn.cursor(row_factory=class_row(RecentBatches)) as cur:
        rows = cur.execute(_RECENT_BATCHES, {"window": window_seconds}).fetchall()
    return {r.vectorizer_id: r for r in rows}


def workers_seen(conn: psycopg.Connection[Any]) -> list[WorkerSeen]:
    """Workers by the batches they logged (kept a day), most recent first."""
    with conn.cursor(row_factory=class_row(WorkerSeen)) as cur:
        return cur.execute(
            "SELECT worker,"
            " extract(epoch FROM now() - max(finished_at))::float8 AS seconds_since_last_batch,"
            " (count(*) FILTER (WHERE finished_at > now() - interval '1 minute'))::int"
            "   AS batches_last_minute"
            " FROM rowembed.batch_stats GROUP BY worker ORDER BY 2"
        ).fetchall()


# application_name of the processes' sessions: a worker pool process's writer
# (workers/state.py; one per process once it ran a task) and a dispatcher
# (workers/dispatcher.py).
SESSION_KINDS = {
    "rowembed-worker": "worker",
    "rowembed-query-worker": "query_worker",
    "rowembed-dispatcher": "dispatcher",
}


def connected_processes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Worker and dispatcher processes connected to this database now, by kind
    (application_name is shown to every role in pg_stat_activity)."""
    rows = conn.execute(
        "SELECT split_part(application_name, ':', 1) AS kind, count(*)::int"
        "  FROM pg_stat_activity"
        " WHERE datname = current_database()"
        "   AND split_part(application_name, ':', 1) = ANY (%s)"  # 'rowembed-dispatcher: ...'
        " GROUP BY 1",
        [list(SESSION_KINDS)],
    ).fetchall()
    counts = dict.fromkeys(SESSION_KINDS.values(), 0)
    for name, count in rows:
        counts[SESSION_KINDS[name]] = count
    return counts


def live_claims(conn: psycopg.Connection[Any]) -> int:
    """Claims held now by live worker sessions (rowembed.live_workers())."""
    return len(call(conn, "live_workers").fetchall())


def queue_entries_created(conn: psycopg.Connection[Any]) -> int:
    """Queue entries created or renewed since install, all vectorizers (changes and
    backfill): rowembed.change_seq only grows, so this is a true counter."""
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM rowembed.change_seq"
    ).fetchone()
    return 0 if row is None else int(row[0])
