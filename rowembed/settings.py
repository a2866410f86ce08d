"""Settings, read from the environment once. Every one is listed in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


class SettingsError(RuntimeError):
    pass


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


_TEXT = {"device", "attention", "index_memory", "log_format", "metrics_token", "trained_models"}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    device: str = "auto"
    attention: str = "auto"  # auto: flash_attention_2 on CUDA when installed, else sdpa
    batch_rows: int | None = None  # None: 512 on CPU, 4096 on CUDA
    token_budget: int | None = None  # None: runtime.forward.default_token_budget
    lease_seconds: float | None = None  # None: the larger of 300 and twice the hard time limit
    task_seconds: float = 10.0
    batch_seconds: float = 5.0  # the work a batch aims at (embedded in eighths: pipeline.drain)
    sweep_seconds: float = 5.0
    poll_seconds: float = 0.05  # the dispatcher's look at the change clock
    max_pending_hints: int = 8
    backfill_chunk: int = 10_000
    index_memory: str = "1GB"  # maintenance_work_mem of a deferred index build
    index_workers: int = 4  # max_parallel_maintenance_workers of that build
    query_cache_rows: int = 10_000  # query vectors kept for SQL callers (search_text)
    metrics_port: int = 9464  # `rowembed metrics` (Prometheus exporter)
    metrics_token: str | None = None  # the bearer token /metrics requires (None: none)
    log_format: str = "text"  # text, or json: one JSON object per line
    # Where a worker of the train queue saves fine-tuned models (one directory per
    # job): storage every embedding worker reads, since they load the new model.
    trained_models: str = "~/.cache/rowembed/trained"

    @classmethod
    def from_env(cls) -> Settings:
        values: dict[str, object] = {
            "database_url": _env("ROWEMBED_DATABASE_URL", "DATABASE_URL"),
            "redis_url": _env("ROWEMBED_BROKER_URL", "ROWEMBED_REDIS_URL", "REDIS_URL"),
        }
        for f in fields(cls):
            if f.name in values:
                continue
            raw = _env("ROWEMBED_" + f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = (
                    raw
                    if f.name in _TEXT
                    else (float(raw) if f.name.endswith("seconds") else int(raw))
                )
            except ValueError:
                raise SettingsError(f"ROWEMBED_{f.name.upper()}={raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.lease_seconds is not None and self.lease_seconds <= self.hard_time_limit:
            # A claim must outlive the longest a task may run, or a live worker's
            # rows go to another while it still embeds them.
            raise SettingsError(
                f"ROWEMBED_LEASE_SECONDS={self.lease_seconds:g} must exceed the task's hard time"
                f" limit, {self.hard_time_limit:g} s (9 x ROWEMBED_TASK_SECONDS="
                f"{self.task_seconds:g}, at least 90): raise it, or leave it unset"
            )

    @property
    def soft_time_limit(self) -> float:
        """When a task is told to stop (it only catches a hang: tasks hand back
        after task_seconds)."""
        return max(60.0, self.task_seconds * 6)

    @property
    def hard_time_limit(self) -> float:
        """When a task's process is killed."""
        return max(90.0, self.task_seconds * 9)

    @property
    def lease(self) -> float:
        """How long a claim holds: always past the hard time limit."""
        if self.lease_seconds is not None:
            return self.lease_seconds
        return max(300.0, 2 * self.hard_time_limit)

    def require_database(self) -> str:
        if not self.database_url:
            raise SettingsError(
                "no database: set ROWEMBED_DATABASE_URL (or DATABASE_URL, or --database-url)"
            )
        # A URL of another scheme would reach libpq as a confusing parse error;
        # a libpq key=value string ('host=... dbname=...') has no scheme.
        _check_scheme("ROWEMBED_DATABASE_URL", self.database_url, DATABASE_SCHEMES)
        return self.database_url

    def require_redis(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "no broker: set ROWEMBED_REDIS_URL (or ROWEMBED_BROKER_URL, REDIS_URL,"
                " or --redis-url)"
            )
        _check_scheme("ROWEMBED_REDIS_URL", self.redis_url, REDIS_SCHEMES + AMQP_SCHEMES)
        return self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        """RabbitMQ (or another AMQP broker) rather than Redis."""
        return (self.redis_url or "").partition("://")[0] in AMQP_SCHEMES


DATABASE_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def _check_scheme(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme, found, _ = url.partition("://")
    if found and scheme not in schemes:
        # Only the scheme is shown: the rest may hold a password.
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(f"{name} is a {scheme}:// URL; rowembed takes {allowed}")
