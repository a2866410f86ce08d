"""The Prometheus exporter of `rowembed metrics`: reads PostgreSQL at scrape time.

Everything comes from the database (status(), the queues, rowembed.batch_stats),
so any number of exporters agree, a restart loses nothing, and workers need no
port of their own. batch_stats is a rolling log (pruned after a day), so what it
gives is exported as gauges over a stated window, not as counters. Imports
neither torch nor Celery.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from rowembed.pgplugin import connect
from rowembed.pgplugin.metrics import (
    connected_processes,
    limit_statements,
    live_claims,
    oldest_pending_seconds,
    queue_entries_created,
    recent_batches,
    workers_seen,
)
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import list_vectorizers

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60.0  # rows/s and tokens/s: the average over the last minute
BATCH_WINDOW_SECONDS = 300.0  # batch duration quantiles and padding: the last 5 minutes
QUANTILES = (0.5, 0.9, 0.99)

T = TypeVar("T")


class _Families:
    """The metric families of one scrape, by name."""

    def __init__(self) -> None:
        v = ["vectorizer"]
        self.up = GaugeMetricFamily(
            "rowembed_up", "1 when the database answered this scrape, else 0"
        )
        self.broken = GaugeMetricFamily(
            "rowembed_vectorizer_broken",
            "1 when the vectorizer cannot work now (`rowembed status` says why), else 0",
            labels=v,
        )
        self.queued = GaugeMetricFamily(
            "rowembed_queued_rows", "Queue entries waiting (backing-off ones included)", labels=v
        )
        self.in_flight = GaugeMetricFamily(
            "rowembed_in_flight_rows", "Queue entries claimed by a live worker", labels=v
        )
        self.failed = GaugeMetricFamily(
            "rowembed_failed_rows", "Queue entries parked as failed", labels=v
        )
        self.embedded = GaugeMetricFamily(
            "rowembed_embedded_rows",
            "Rows in the destination (the planner's estimate above a million)",
            labels=v,
        )
        self.chunks = GaugeMetricFamily(
            "rowembed_embedded_chunks",
            "A chunked vectorizer's destination rows (rowembed_embedded_rows counts source rows)",
            labels=v,
        )
        self.rebuilding = GaugeMetricFamily(
            "rowembed_vectorizer_rebuilding",
            "1 while a model change (alter_vectorizer) rebuilds it or builds it as a replacement",
            labels=v,
        )
        self.lag = GaugeMetricFamily(
            "rowembed_oldest_pending_age_seconds",
            "Age of the oldest queued change (parked ones aside); 0 when none waits",
            labels=v,
        )
        self.rows_rate = GaugeMetricFamily(
            "rowembed_rows_per_second",
            "Queue entries completed per second, averaged over the last minute",
            labels=v,
        )
        self.tokens_rate = GaugeMetricFamily(
            "rowembed_tokens_per_second",
            "Real (unpadded) tokens embedded per second, averaged over the last minute",
            labels=v,
        )
        self.duration = GaugeMetricFamily(
            "rowembed_batch_duration_seconds",
            "Batch duration quantiles over the batches of the last 5 minutes",
            labels=[*v, "quantile"],
        )
        self.padding = GaugeMetricFamily(
            "rowembed_padding_ratio",
            "Padded tokens computed per real token over the last 5 minutes (1: no padding)",
            labels=v,
        )
        self.live_claims = GaugeMetricFamily(
            "rowembed_live_claims", "Claims held now by live worker sessions"
        )
        self.processes = GaugeMetricFamily(
            "rowembed_connected_processes",
            "Worker pool processes (once they ran a task) and dispatchers connected now",
            labels=["kind"],
        )
        self.worker_age = GaugeMetricFamily(
            "rowembed_worker_last_batch_age_seconds",
            "Seconds since the worker (host:pid/device) last wrote a batch (workers of the last"
            " day)",
            labels=["worker"],
        )
        self.changes = CounterMetricFamily(
            "rowembed_queued_changes",
            "Values drawn from rowembed.change_seq: changes and backfill rows queued,"
            " all vectorizers (rolled-back writes count too)",
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(vars(self).values())


class RowembedCollector(Collector):
    """Queries PostgreSQL at each scrape. A vectorizer whose queries fail loses its
    own samples only; an unreachable database is `rowembed_up 0`, never a failed
    scrape."""

    def __init__(self, database_url: str, statement_timeout: float = 5.0) -> None:
        self.database_url = database_url
        # A scrape should answer within Prometheus' own timeout (10 s by default).
        self.statement_timeout = statement_timeout

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        try:
            url = self.database_url
            with connect(url, application_name="rowembed metrics") as conn:
                limit_statements(conn, self.statement_timeout)
                self._read(conn, families)
            families.up.add_metric([], 1)
        except psycopg.Error as exc:
            log.warning("metrics: the database did not answer: %s", str(exc).strip())
            families.up.add_metric([], 0)
        return list(families)

    def _read(self, conn: psycopg.Connection[Any], f: _Families) -> None:
        vectorizers = status(conn)  # each one's own failure is its `problem`, not ours
        queues = _isolated(lambda: {v.id: v for v in list_vectorizers(conn)}, "vectorizers") or {}
        rates = _isolated(lambda: recent_batches(conn, RATE_WINDOW_SECONDS), "batches") or {}
        batches = _isolated(lambda: recent_batches(conn, BATCH_WINDOW_SECONDS), "batches") or {}
        for s in vectorizers:
            label = [s.name]
            f.broken.add_metric(label, 1 if s.problem else 0)
            f.rebuilding.add_metric(label, 1 if s.rebuild else 0)
            for family, value in (
                (f.queued, s.queued),
                (f.in_flight, s.in_flight),
                (f.failed, s.failed),
                (f.embedded, s.embedded),
                (f.chunks, s.chunks),
            ):
                if value is not None:
                    family.add_metric(label, value)
            vectorizer = queues.get(s.id)
            if vectorizer is not None and s.problem is None:
                lag = _isolated(lambda v=vectorizer: oldest_pending_seconds(conn, v), s.name)
                if lag is not None:
                    f.lag.add_metric(label, lag)
            rate = rates.get(s.id)
            f.rows_rate.add_metric(label, rate.rows / RATE_WINDOW_SECONDS if rate else 0.0)
            f.tokens_rate.add_metric(label, rate.tokens / RATE_WINDOW_SECONDS if rate else 0.0)
            recent = batches.get(s.id)
            if recent is not None:
                for q, seconds in zip(
                    QUANTILES,
                    (recent.seconds_p50, recent.seconds_p90, recent.seconds_p99),
                    strict=True,
                ):
                    f.duration.add_metric([*label, str(q)], seconds)
                if recent.tokens:
                    f.padding.add_metric(label, recent.padded_tokens / recent.tokens)
        claims = _isolated(lambda: live_claims(conn), "live claims")
        if claims is not None:
            f.live_claims.add_metric([], claims)
        processes = _isolated(lambda: connected_processes(conn), "processes") or {}
        for kind, count in processes.items():
            f.processes.add_metric([kind], count)
        for w in _isolated(lambda: workers_seen(conn), "workers") or []:
            f.worker_age.add_metric([w.worker], w.seconds_since_last_batch)
        created = _isolated(lambda: queue_entries_created(conn), "change_seq")
        if created is not None:
            f.changes.add_metric([], created)


def _isolated(read: Callable[[], T], what: str) -> T | None:
    """`read()`, or None when its SQL fails (logged): one failing part of a scrape
    (a broken vectorizer, a privilege this role lacks) leaves out its samples only."""
    try:
        return read()
    except psycopg.Error as exc:
        log.warning("metrics: %s left out: %s", what, str(exc).strip().splitlines()[0])
        return None


def serve(
    database_url: str, port: int, address: str = "127.0.0.1", token: str | None = None
) -> None:
    """Serves /metrics on `address:port` until interrupted; with `token`, only to
    requests that carry it (Authorization: Bearer <token>)."""
    # libpq's wait for an unreachable server, which is forever by default.
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")
    registry = CollectorRegistry()
    registry.register(RowembedCollector(database_url))
    app = make_wsgi_app(registry)
    if token is not None:
        app = bearer_token_required(app, token)
    elif not ipaddress.ip_address(socket.gethostbyname(address)).is_loopback:
        log.warning(
            "metrics: serving %s without authentication; the samples name tables and"
            " vectorizers: set ROWEMBED_METRICS_TOKEN",
            address,
        )
    server = make_server(address, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    log.info("metrics: serving http://%s:%d/metrics", address, port)
    server.serve_forever()


def bearer_token_required(app: WSGIApplication, token: str) -> WSGIApplication:
    """`app` for requests whose Authorization header is `Bearer <token>`; 401 otherwise."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Bearer realm="rowembed"'), ("Content-Type", "text/plain")],
            )
            return [b"rowembed metrics: this exporter requires its bearer token\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass
