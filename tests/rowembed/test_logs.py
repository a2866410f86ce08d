"""Log formats: `--log-format json` / ROWEMBED_LOG_FORMAT."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from rowembed.logs import JsonFormatter


def test_a_record_is_one_line_of_json_with_its_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "rowembed.test", logging.ERROR, __file__, 1, "failed: %s", ("two\nlines",), None
        )
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "rowembed.test"
    assert entry["message"] == "failed: two\nlines"
    assert "ValueError: bad" in entry["exception"]
    assert entry["time"].endswith("+00:00")


def test_an_unknown_log_format_in_the_environment_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rowembed", "status"],
        env={**os.environ, "ROWEMBED_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ROWEMBED_LOG_FORMAT='xml'" in result.stderr


def test_a_json_worker_logs_transformers_warnings_as_json_too() -> None:
    """transformers gives its loggers a plain-text handler of its own."""
    probe = (
        "from rowembed.logs import configure_logging, libraries_log_through_logging\n"
        "configure_logging('INFO', 'json')\n"
        "libraries_log_through_logging()\n"
        "from transformers.utils import logging\n"
        "logging.get_logger('transformers.modeling_utils').warning('weights not used')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["logger"] == "transformers.modeling_utils"
    assert entry["message"] == "weights not used"
