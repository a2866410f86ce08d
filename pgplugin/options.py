"""A vectorizer's options, declared once.

`rowembed.create_vectorizer` and `rowembed.alter_vectorizer` (SQL) take these
arguments by these names, and validate them in one place
(`rowembed.create_vectorizer`, which `alter_vectorizer` builds its replacement
with); the Python wrappers and the CLI's flags are derived from this list, and
`tests/pgplugin/test_options.py` checks the SQL functions' arguments against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# How alter_vectorizer changes an option: "rebuild" builds a replacement beside
# the vectorizer (the embeddings change); "in place" changes the catalog row
# (only queries or retries read it); None: set at creation only.
Change = Literal["rebuild", "in place"] | None


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    help: str
    alter: Change = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("name", str, "the vectorizer's name (default: the table's)"),
    Option("model", str, "a Hugging Face encoder (hub id or directory)", "rebuild"),
    Option("dimensions", int, "the model's output size if rowembed does not know it", "rebuild"),
    Option("destination", str, "the embeddings table, [schema.]table"),
    Option("embedding_column", str, "the vector column's name"),
    Option("separator", str, "between the text columns' values"),
    Option("min_similarity", float, "the default search threshold", "in place"),
    Option("query_instruction", str, "prepended to query texts", "in place"),
    Option("rerank_model", str, "the cross-encoder of rerank", "in place"),
    Option("max_attempts", int, "tries before a failing row is parked", "in place"),
    Option("backfill", bool, "queue the existing rows"),
    Option("storage", str, "vector column type", "rebuild", ("vector", "halfvec")),
    Option("index_method", str, "vector index", "rebuild", ("hnsw", "hnsw_binary", "none")),
    Option("defer_index_above", int, "drop the index during larger backfills"),
    Option("passage_instruction", str, "prepended to the embedded text", "rebuild"),
    Option("chunking", str, "embed long rows in chunks", "rebuild", ("none", "tokens")),
    Option("chunk_tokens", int, "tokens per chunk (default: the model's)", "rebuild"),
    Option("chunk_overlap", int, "tokens shared by neighbouring chunks", "rebuild"),
    Option("max_chunks", int, "chunks per row at most", "rebuild"),
)

CREATE_OPTIONS: tuple[str, ...] = tuple(o.name for o in OPTIONS)
# keep_old belongs to a rebuild, not to the vectorizer.
ALTER_OPTIONS: tuple[str, ...] = (*(o.name for o in OPTIONS if o.alter), "keep_old")


def given(options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The options that were given (not None), after refusing unknown names."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    return {key: options[key] for key in allowed if options.get(key) is not None}
