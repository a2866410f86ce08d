"""Through the pooler applications use: PgBouncer in transaction mode carries
the application's writes (captured) and its searches; a worker or dispatcher
pointed at it stops at start, saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.sessions import SharedSessions, require_own_sessions

from ..conftest import MODEL, WorkerProcess, wait_until

Conn = psycopg.Connection[Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pooler_url(postgres: EmbeddedPostgres, served: tuple[str, WorkerProcess]) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the session's PostgreSQL, to
    this module's database (which a worker of its own serves)."""
    dbname = psycopg.conninfo.conninfo_to_dict(served[0])["dbname"]
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="rowembed-pgbouncer-"))
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={postgres.base_dir} port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 100\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {home / 'pgbouncer.log'}\n"
    )
    argv = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:  # it refuses root; the embedded server's user reaches its socket
        owner = postgres.base_dir.stat()
        for path in home.iterdir():
            os.chown(path, owner.st_uid, owner.st_gid)
        os.chown(home, owner.st_uid, owner.st_gid)
        argv[1:1] = ["-u", postgres.base_dir.owner()]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"

    def up() -> bool:
        try:
            psycopg.connect(url, connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    try:
        wait_until(up, timeout=20)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def through(url: str) -> Conn:
    """An application's connection through the pooler: no server-side prepared
    statements (PgBouncer 1.18 cannot carry them in transaction mode)."""
    return psycopg.connect(url, autocommit=True, prepare_threshold=None)


def test_application_writes_and_searches_go_through_a_transaction_pooler(
    served: tuple[str, WorkerProcess], table: str, pooler_url: str
) -> None:
    with connect(served[0]) as conn:
        writes_and_searches(conn, table, pooler_url)


def writes_and_searches(conn: Conn, table: str, pooler_url: str) -> None:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    count = sql.SQL("SELECT count(*) FROM {}").format(v.destination)
    with through(pooler_url) as app:
        app.execute(sql.SQL("INSERT INTO {} VALUES (1, 'cats sleep all day')").format(t))
        with app.transaction():
            app.execute(sql.SQL("INSERT INTO {} VALUES (2, 'markets fell')").format(t))
            app.execute(sql.SQL("INSERT INTO {} VALUES (3, 'to be removed')").format(t))
        app.execute(sql.SQL("UPDATE {} SET body = 'stock markets fell' WHERE id = 2").format(t))
        app.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(t))
        wait_until(lambda: conn.execute(count).fetchone() == (2,), timeout=120)
        wait_until(lambda: not conn.execute(sql.SQL("SELECT 1 FROM {}").format(v.queue)).fetchall())
        vector = conn.execute(
            sql.SQL("SELECT embedding FROM {} WHERE id = 2").format(v.destination)
        ).fetchone()
        assert vector is not None
        by_vector = app.execute(
            sql.SQL("SELECT (item).id FROM rowembed.search(NULL::{}, %s::text::vector, 1)").format(
                t
            ),
            [str(vector[0].to_list())],
        ).fetchall()
        assert by_vector == [(2,)]
        by_text = app.execute(
            sql.SQL(
                "SELECT (item).id FROM rowembed.search_text(NULL::{}, 'a kitten napping', 1,"
                " timeout_seconds => 30)"
            ).format(t)
        ).fetchall()
        assert by_text == [(1,)]


def test_own_sessions_are_told_from_a_transaction_pooler(
    served: tuple[str, WorkerProcess], pooler_url: str
) -> None:
    require_own_sessions(served[0], "worker")  # directly: sessions of its own
    with pytest.raises(SharedSessions, match="transaction"):
        require_own_sessions(pooler_url, "worker")


@pytest.mark.parametrize("command", ["worker", "dispatcher"])
def test_a_worker_or_dispatcher_behind_a_transaction_pooler_stops_at_start(
    pooler_url: str, redis_url: str, command: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rowembed", command],
        env={**os.environ, "ROWEMBED_DATABASE_URL": pooler_url, "ROWEMBED_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pooler in transaction" in lines[0], result.stderr
    assert command in lines[0]
