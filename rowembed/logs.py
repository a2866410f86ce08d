"""How rowembed's processes log: plain lines, or one JSON object per line
(`--log-format json` or ROWEMBED_LOG_FORMAT=json) for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _current_task() -> tuple[str, str] | None:
    """(id, name) of the Celery task this process runs now, if any; Celery is
    looked at only where it is loaded already (a worker)."""
    state = sys.modules.get("celery._state")
    task = state.get_current_task() if state is not None else None
    if task is None or not task.request.id:
        return None
    return task.request.id, task.name


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time (UTC, ISO 8601), level, logger, process,
    message; task_id and task_name when a Celery task logged it; the exception
    (its traceback in one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        task = _current_task()
        if task is not None:  # which task logged it: a worker's lines can be grouped by task
            entry["task_id"], entry["task_name"] = task
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The root logger of this process (and of the processes it forks) writes to
    stderr in `log_format`."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        # Python warnings (Celery's about running as root among them) become JSON too.
        logging.captureWarnings(True)
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        # Celery's "Task ... succeeded in 0.01s: 0", several a second from the
        # query tasks; the embed task logs its own report, failures stay ERROR.
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


def libraries_log_through_logging() -> None:
    """For a worker with JSON logs, before it forks its pool: what Celery and
    transformers write past the root logger goes through it too. Celery writes
    its shutdown notice ("worker: Warm shutdown") with os.write to stdout;
    transformers gives its loggers a handler of its own and stops propagation."""
    import celery.apps.worker
    from transformers.utils import logging as transformers_logging

    notices = logging.getLogger("celery.apps.worker")

    def say(message: str, file: object = None) -> None:
        notices.info(message.strip())

    celery.apps.worker.safe_say = say
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
