"""A real corpus every Python install has: the standard library's docstrings."""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "__phello__",
}


@dataclass(frozen=True)
class Docstring:
    module: str
    qualname: str
    text: str


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings(root: Path, path: Path) -> Iterator[Docstring]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return
    module = _module_name(root, path)
    doc = ast.get_docstring(tree)
    if doc:
        yield Docstring(module, module, doc)
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield Docstring(module, name, doc)
                if isinstance(child, ast.ClassDef):
                    stack.append((child, name))


def stdlib_docstrings(limit: int, min_chars: int = 80) -> list[Docstring]:
    """`limit` docstrings of public objects: every module's own, then an even
    sample of the rest, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    modules: list[Docstring] = []
    members: list[Docstring] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        for d in _docstrings(root, path):
            if len(d.text) < min_chars or any(p.startswith("_") for p in d.qualname.split(".")):
                continue
            (modules if d.qualname == d.module else members).append(d)
    chosen = modules[:limit]
    room = limit - len(chosen)
    if room > 0 and members:
        step = max(1, len(members) // room)
        chosen += members[::step][:room]
    return chosen
