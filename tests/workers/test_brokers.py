"""Brokers people run: Redis (every other test) and RabbitMQ, the one that runs
on these machines (127.0.0.1:5672), in a virtual host of each test's own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import connect, create_vectorizer
from rowembed.settings import Settings
from rowembed.workers.celery_app import hint_priorities, make_app

from ..conftest import MODEL, Stack, wait_until

Conn = psycopg.Connection[Any]
RABBITMQ = ("127.0.0.1", 5672)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own (queues of other sessions are
    not shared), removed afterwards."""
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (the README's test machines run one)")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: a virtual host cannot be made")
    vhost = f"rowembed-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_urgent_hints_go_first_on_either_broker() -> None:
    """Redis serves lower priorities first, RabbitMQ higher ones."""
    redis = make_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    urgent, background = hint_priorities(redis)
    assert urgent < background
    rabbit = make_app(Settings(redis_url="amqp://guest:guest@127.0.0.1:1//"))
    urgent, background = hint_priorities(rabbit)
    assert urgent > background
    assert rabbit.conf.result_backend == "rpc://"


def test_a_worker_on_rabbitmq_embeds_changes_and_answers_searches(
    stack: Stack, amqp_url: str
) -> None:
    """`rowembed worker` with an amqp:// broker: live changes and a backfill are
    embedded, search_text() is answered (through the dispatcher and the query
    worker), and the queues are declared with priorities."""
    vhost = amqp_url.rsplit("/", 1)[1]
    with connect(stack.pg.url) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'an existing row about cats')")
        stack.worker("rabbit", env={"ROWEMBED_REDIS_URL": amqp_url})
        v = create_vectorizer(conn, "notes", ["body"], model=MODEL)
        conn.execute("INSERT INTO notes VALUES (2, 'a new row about the stock market')")
        count = sql.SQL("SELECT count(*) FROM {}").format(v.destination)
        wait_until(lambda: conn.execute(count).fetchone() == (2,), timeout=120)
        found = conn.execute(
            "SELECT (item).id FROM rowembed.search_text(NULL::notes, 'shares and prices', 1,"
            " timeout_seconds => 30)"
        ).fetchall()
        assert found == [(2,)]
    queues = rabbitmqctl("list_queues", "-p", vhost, "name", "arguments")
    embed = next(line for line in queues.splitlines() if line.startswith("rowembed.embed"))
    assert "x-max-priority" in embed, queues
