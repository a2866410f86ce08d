"""Cutting a long text into chunks the model reads whole: windows of tokens of
the model's own tokenizer, overlapping, ending at a paragraph or sentence end
when one is near. Pure logic over token offsets; the encoder tokenizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A window may end this much earlier (a fraction of its tokens) to end at a
# paragraph or a sentence: a chunk of whole sentences embeds better.
BOUNDARY_REACH = 0.25
_SENTENCE_ENDS = frozenset(".!?;:")


@dataclass(frozen=True)
class ChunkPlan:
    """How a vectorizer cuts rows: chunks of at most `tokens` tokens as the model
    reads them (its special tokens and the passage instruction included; None:
    the model's limit), `overlap` text tokens shared by neighbours (None: an
    eighth of a chunk), at most `max_chunks` chunks per row."""

    tokens: int | None
    overlap: int | None
    max_chunks: int

    def window(self, limit: int, reserved: int) -> tuple[int, int]:
        """(text tokens per chunk, overlap) for a model that reads `limit`
        tokens, of which `reserved` are its special tokens and the instruction."""
        size = min(self.tokens or limit, limit) - reserved
        if size < 1 or self.max_chunks < 1:
            raise ValueError("chunks must hold at least one token of text")
        overlap = size // 8 if self.overlap is None else self.overlap
        if not 0 <= overlap < size:
            raise ValueError(f"chunk overlap must be in [0, {size}), not {overlap}")
        return size, overlap


@dataclass(frozen=True)
class Window:
    first: int  # index of the first token
    end: int  # one past the last token
    start_char: int  # the chunk's text: text[start_char:end_char]
    end_char: int


def windows(
    text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int, max_chunks: int
) -> tuple[list[Window], bool]:
    """Windows of at most `size` tokens over a text's tokens (`offsets`: each
    token's characters), and whether tokens were left beyond `max_chunks`
    windows (the row is cut). Every other token is in a window; neighbours share
    `overlap` tokens, fewer when a window ends early at a boundary."""
    count = len(offsets)
    found: list[Window] = []
    first = 0
    while first < count:
        if len(found) == max_chunks:
            return found, True
        end = min(first + size, count)
        if end < count:
            end = _boundary(text, offsets, first, end, size, overlap)
        found.append(Window(first, end, offsets[first][0], offsets[end - 1][1]))
        if end == count:
            break
        first = max(end - overlap, first + 1)
    return found, False


def _boundary(
    text: str, offsets: Sequence[tuple[int, int]], first: int, end: int, size: int, overlap: int
) -> int:
    """Where a full window should end: after the last line break in its last
    quarter, else after the last sentence end there, else at `end`."""
    earliest = max(first + 1, end - int(size * BOUNDARY_REACH), first + overlap + 1)
    sentence = None
    for cut in range(end, earliest - 1, -1):
        token_end = offsets[cut - 1][1]
        gap = text[token_end : offsets[cut][0]]
        if "\n" in gap:
            return cut
        if sentence is None and gap and token_end > 0 and text[token_end - 1] in _SENTENCE_ENDS:
            sentence = cut
    return sentence or end
