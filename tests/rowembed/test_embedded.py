"""The embedded servers of `rowembed.dev` (the demo's and the tests')."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rowembed.dev.embedded import EmbeddedPostgres


@pytest.mark.skipif(os.geteuid() != 0, reason="the server user is dropped to only as root")
def test_binaries_the_server_user_cannot_reach_are_one_clear_error(tmp_path: Path) -> None:
    """A virtual environment inside root's home (mode 0700): initdb would fail
    with a bare PermissionError."""
    home = tmp_path / "root-home"
    (home / "venv" / "bin").mkdir(parents=True)
    home.chmod(0o700)
    server = EmbeddedPostgres()
    server.bin_dir = home / "venv" / "bin"
    try:
        with pytest.raises(RuntimeError, match=f"{home} is closed to other users"):
            server.start()
    finally:
        server.remove()
