"""What rowembed knows of each family of models, written once.

The model runtime reads it (pooling when a model directory does not say,
limits, padding side); `rowembed migrate` copies it into rowembed.model_family,
where create_vectorizer takes its defaults (dimensions, query instruction,
threshold). Pure data: imports neither torch nor psycopg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Pooling = Literal["cls", "mean", "max", "lasttoken"]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    pattern: str  # case-insensitive regex, searched in the model's name
    # Output size per model, by the last part of its name.
    dimensions: dict[str, int] = field(default_factory=dict)
    query_instruction: str = ""  # prefixed to queries
    passage_instruction: str = ""  # prefixed to rows
    pooling: Pooling | None = None  # None: the model's sentence-transformers config, else mean
    # Similarities of unrelated texts differ by family: a starting threshold only.
    min_similarity: float = 0.3
    padding_side: Literal["right", "left"] = "right"
    max_tokens: int | None = None  # None: the model's own limits

    def matches(self, model: str) -> bool:
        return re.search(self.pattern, model, re.IGNORECASE) is not None


BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

# In rank order: the first family whose pattern matches a model is its family.
FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "bge-en-v1.5",
        r"bge-(small|base|large)-en",
        dimensions={"bge-small-en-v1.5": 384, "bge-base-en-v1.5": 768, "bge-large-en-v1.5": 1024},
        query_instruction=BGE_QUERY_INSTRUCTION,
        pooling="cls",
        # Contrastive temperature 0.01: similarities cluster in about [0.6, 1].
        min_similarity=0.7,
        max_tokens=512,
    ),
    ModelFamily("bge-reranker", r"bge-reranker", min_similarity=0.7, max_tokens=512),
    ModelFamily("bge", r"bge-", min_similarity=0.7),
    ModelFamily(
        "sentence-transformers",
        r"all-(MiniLM|mpnet)",
        dimensions={"all-MiniLM-L6-v2": 384, "all-MiniLM-L12-v2": 384, "all-mpnet-base-v2": 768},
        pooling="mean",
    ),
    ModelFamily(
        "e5-v2",
        r"e5-(small|base|large)-v2",
        dimensions={"e5-small-v2": 384, "e5-base-v2": 768, "e5-large-v2": 1024},
        query_instruction="query: ",
        passage_instruction="passage: ",
        pooling="mean",
        # Temperature 0.01 as well: similarities cluster in about [0.7, 1].
        min_similarity=0.75,
        max_tokens=512,
    ),
    ModelFamily("other", r""),  # any Hugging Face encoder
)


def family_of(model: str) -> ModelFamily:
    return next(f for f in FAMILIES if f.matches(model))
