"""Chunk windows (pure) and the encoder's chunks (the bundled model's tokenizer)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from rowembed.workers.runtime import ChunkPlan, Encoder
from rowembed.workers.runtime.chunking import windows


def word_offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def test_windows_cover_every_token_with_the_overlap() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    offsets = word_offsets(text)
    found, cut = windows(text, offsets, size=30, overlap=5, max_chunks=10)
    assert not cut
    assert found[0].first == 0 and found[-1].end == 100
    for before, after in itertools.pairwise(found):
        assert after.first == before.end - 5
    assert all(w.end - w.first <= 30 for w in found)
    assert text[found[1].start_char : found[1].end_char].startswith("w25 ")


def test_a_window_ends_at_a_paragraph_or_sentence_when_one_is_near() -> None:
    words = [f"w{i}" for i in range(60)]
    words[24] += "."  # a sentence ends after token 24, in the window's last quarter
    text = " ".join(words[:27]) + "\n\n" + " ".join(words[27:])  # a paragraph after token 26
    found, _ = windows(text, word_offsets(text), size=30, overlap=0, max_chunks=10)
    assert found[0].end == 27
    text = " ".join(words)
    found, _ = windows(text, word_offsets(text), size=30, overlap=0, max_chunks=10)
    assert found[0].end == 25
    assert text[found[0].start_char : found[0].end_char].endswith("w24.")


def test_a_row_beyond_max_chunks_is_cut_and_says_so() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    found, cut = windows(text, word_offsets(text), size=10, overlap=0, max_chunks=3)
    assert cut and len(found) == 3 and found[-1].end == 30


def test_plan_sizes_are_checked() -> None:
    assert ChunkPlan(None, 64, 10).window(512, 2) == (510, 64)
    assert ChunkPlan(128, None, 10).window(512, 2) == (126, 15)
    assert ChunkPlan(1024, 0, 10).window(512, 2) == (510, 0)
    with pytest.raises(ValueError, match="overlap"):
        ChunkPlan(66, 64, 10).window(512, 2)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("sentence-transformers/all-MiniLM-L6-v2", device="cpu")


def test_a_short_text_is_one_chunk_equal_to_the_text(encoder: Encoder) -> None:
    text = "A short row about cats."
    chunked = encoder.chunk([text], ChunkPlan(None, 32, 10))
    assert chunked.spans == [[(0, len(text))]]
    assert chunked.tokenized.ids == encoder.tokenize([text]).ids
    assert np.allclose(
        encoder.encode_tokenized(chunked.tokenized).vectors, encoder.encode([text]).vectors
    )


def test_long_text_chunks_are_whole_model_inputs_that_cover_the_text(encoder: Encoder) -> None:
    text = " ".join(f"Sentence {i} talks about topic {i % 7}." for i in range(400))
    chunked = encoder.chunk([text, "tiny"], ChunkPlan(128, 16, 100), instruction="passage: ")
    spans = chunked.spans[0]
    assert len(spans) > 10 and not chunked.cut[0]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(spans))  # neighbours overlap
    assert all(len(ids) <= 128 for ids in chunked.tokenized.ids)
    assert chunked.tokenized.truncated == 0
    # Each chunk's input is what the tokenizer makes of the instruction and its text.
    first = chunked.tokenized
    assert first.texts[0] == "passage: " + text[spans[0][0] : spans[0][1]]
    assert first.ids[0] == encoder.tokenize([first.texts[0]]).ids[0]
    assert [list(r) for r in chunked.inputs_of()][1] == [len(spans)]


def test_a_huge_text_is_cut_at_its_last_allowed_chunk(encoder: Encoder) -> None:
    text = "word " * 200_000
    chunked = encoder.chunk([text], ChunkPlan(64, 0, 4))
    assert chunked.cut == [True] and len(chunked.spans[0]) == 4


class CountingTokenizer:
    """The encoder's tokenizer, counting the characters it is given."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def __call__(self, texts: str | list[str], **kwargs: object) -> object:
        self.chars += len(texts) if isinstance(texts, str) else sum(map(len, texts))
        return self.tokenizer(texts, **kwargs)  # type: ignore[operator]

    def __getattr__(self, name: str) -> object:
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("unit", ["漢字", "word "])
def test_a_huge_row_is_read_only_as_far_as_its_chunks_go(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch, unit: str
) -> None:
    """Text with a token or more per character (CJK) as much as English: the
    tokenizer reads a few times what the allowed chunks hold, not the row, and
    the chunks are those of the whole text."""
    text = unit * 400_000
    plan = ChunkPlan(64, 8, 3)
    counting = CountingTokenizer(encoder.tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", counting)
    chunked = encoder.chunk([text], plan)
    assert chunked.cut == [True] and len(chunked.spans[0]) == 3
    assert counting.chars < 64 * 3 * 40
    monkeypatch.undo()
    whole = encoder.chunk([text[:20_000]], plan)
    assert chunked.spans == whole.spans and chunked.tokenized.ids == whole.tokenized.ids
