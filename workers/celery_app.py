"""The Celery application (`rowembed.workers.celery_app:app`). Messages on Redis
are only hints ("vectorizer N has work"); the queue tables in PostgreSQL hold
the work itself, so a lost message delays work and loses none. Importing this
module builds the app from the environment: `import rowembed` does not."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from rowembed.settings import Settings

from .queues import EMBED_QUEUE, QUERY_QUEUE, RERANK_QUEUE, TRAIN_QUEUE

# Message priorities of embed hints, (urgent, background): Redis serves lower
# numbers first, RabbitMQ higher ones (from queues declared with
# x-max-priority). Which hint gets which is the policy's (policy.hint_priority).
HINT_PRIORITIES = {"redis": (0, 9), "amqp": (9, 0)}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery(
        "rowembed",
        broker=settings.redis_url,
        # Only the interactive tasks return results, briefly: in Redis, or on
        # RabbitMQ as replies to the caller (rpc://).
        backend="rpc://" if settings.broker_is_amqp else settings.redis_url,
        include=["rowembed.workers.tasks"],
    )
    if settings.broker_is_amqp:
        app.conf.task_queues = [
            Queue(name, Exchange(name, "direct"), routing_key=name,
                  queue_arguments={"x-max-priority": max(HINT_PRIORITIES["amqp"])})
            for name in (EMBED_QUEUE, QUERY_QUEUE, RERANK_QUEUE, TRAIN_QUEUE)
        ]  # fmt: skip
    app.conf.update(
        task_default_queue=EMBED_QUEUE,
        task_routes={
            "rowembed.embed": {"queue": EMBED_QUEUE},
            "rowembed.rerank": {"queue": RERANK_QUEUE},
            "rowembed.embed_query": {"queue": QUERY_QUEUE},
            "rowembed.train": {"queue": TRAIN_QUEUE},
        },
        result_expires=300,
        # Acknowledge after the task ran, and requeue when its process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: a batch is seconds of GPU work.
        worker_prefetch_multiplier=1,
        # Tasks hand back after ROWEMBED_TASK_SECONDS; these limits only catch a hang,
        # and stay far below Redis' visibility timeout (when an unacknowledged
        # message is delivered again). Correctness never rests on either: claims
        # die with the worker's database session, and the dispatcher re-sends hints.
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        broker_transport_options={
            "visibility_timeout": 3600,
            "priority_steps": sorted(HINT_PRIORITIES["redis"]),
        },
        # On SIGTERM, finish the running batch (a few seconds) before exiting.
        worker_soft_shutdown_timeout=max(10.0, settings.task_seconds * 2),
        worker_enable_soft_shutdown_on_idle=True,
        broker_connection_retry_on_startup=True,
        # Task events, so Flower (`celery -A rowembed.workers.celery_app flower`) and
        # `celery events` show each task, including those sent and not yet received.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()


class BrokerUnreachable(RuntimeError):
    """The broker did not answer at start."""


def require_broker(app: Celery, location: str) -> None:
    """A worker or dispatcher whose broker does not answer stops at start, in one
    line naming `location` (never the URL's credentials), rather than print
    "ready" and retry forever."""
    try:
        with app.connection_for_write() as connection:
            connection.connect()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BrokerUnreachable(
            f"cannot reach the broker at {location} (ROWEMBED_REDIS_URL): {first}"
        ) from None


def hint_priorities(app: Celery) -> tuple[int, int]:
    """(urgent, background) message priorities on `app`'s broker."""
    amqp = Settings(redis_url=app.conf.broker_url).broker_is_amqp
    return HINT_PRIORITIES["amqp" if amqp else "redis"]


def waiting_messages(app: Celery, queue: str) -> int:
    """Messages waiting in `queue`; 0 when it does not exist yet or the broker is
    unreachable (hints are an optimisation: the database holds the work)."""
    try:
        with app.connection_for_write() as connection:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
            return int(declared.message_count)
    except Exception:
        return 0
