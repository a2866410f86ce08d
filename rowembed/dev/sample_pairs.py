"""(query, answer) pairs a fine-tuning can learn from, made from text the
repository has: each docstring's first line asked in a team's jargon (common
words swapped for made-up ones, the same swap in every query), which the base
model has never seen. Held-out queries use the same jargon on other rows."""

from __future__ import annotations

import re
from collections.abc import Sequence

JARGON = {
    "return": "zorbl",
    "returns": "zorbls",
    "file": "quaxe",
    "files": "quaxes",
    "string": "flimbo",
    "list": "gromp",
    "object": "plinth",
    "objects": "plinths",
    "value": "vrak",
    "values": "vraks",
    "name": "nuggle",
    "data": "dorp",
    "function": "fizzick",
    "new": "snerp",
    "create": "blarg",
    "error": "glitz",
    "number": "numbo",
    "directory": "dirkle",
    "class": "klorp",
    "message": "mezzle",
    "read": "slurp",
    "write": "splat",
    "path": "trake",
    "time": "chronk",
    "instance": "wumple",
    "dictionary": "lexo",
    "module": "modz",
    "test": "prob",
    "method": "methak",
    "character": "glyff",
    "characters": "glyffs",
    "line": "strant",
    "lines": "strants",
    "socket": "portle",
    "server": "hubbo",
    "date": "daggo",
}
_WORD = re.compile(r"[A-Za-z]+")


def in_jargon(text: str) -> tuple[str, int]:
    """`text` with JARGON's words swapped, and how many were."""
    swapped = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal swapped
        word = JARGON.get(match.group(0).lower())
        if word is None:
            return match.group(0)
        swapped += 1
        return word

    return _WORD.sub(swap, text), swapped


def jargon_pairs(texts: Sequence[str]) -> list[tuple[str, int]]:
    """(query, index into `texts`) for each text whose first line has four
    words or more and at least one word the jargon swaps."""
    pairs = []
    for i, text in enumerate(texts):
        first = text.strip().splitlines()[0].strip() if text.strip() else ""
        query, swapped = in_jargon(first)
        if swapped and len(_WORD.findall(first)) >= 4:
            pairs.append((query, i))
    return pairs
