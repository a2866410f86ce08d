"""Model families: one source for the runtime and for SQL's defaults."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import torch

from rowembed.families import BGE_QUERY_INSTRUCTION, FAMILIES, family_of
from rowembed.workers.runtime import Encoder
from rowembed.workers.runtime.models import bundled_model_path

from ..conftest import MODEL


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("BAAI/bge-base-en-v1.5", "bge-en-v1.5"),
        ("/models/bge-small-en-v1.5", "bge-en-v1.5"),
        ("BAAI/bge-reranker-base", "bge-reranker"),
        ("BAAI/bge-m3", "bge"),
        (MODEL, "sentence-transformers"),
        ("intfloat/e5-base-v2", "e5-v2"),
        ("my-org/my-encoder", "other"),
    ],
)
def test_a_model_belongs_to_the_first_family_that_matches(model: str, family: str) -> None:
    assert family_of(model).name == family


@pytest.mark.parametrize(
    "model",
    [
        "BAAI/bge-base-en-v1.5",
        "BAAI/bge-small-en-v1.5",
        "BAAI/bge-large-en-v1.5",
        "BAAI/bge-m3",
        MODEL,
        "sentence-transformers/all-mpnet-base-v2",
        "intfloat/e5-small-v2",
        "my-org/my-model",
    ],
)
def test_sql_defaults_are_the_families(conn: psycopg.Connection[Any], model: str) -> None:
    family = family_of(model)
    row = conn.execute(
        "SELECT rowembed.model_dimensions(%(m)s), rowembed.default_query_instruction(%(m)s),"
        " rowembed.default_passage_instruction(%(m)s), rowembed.default_min_similarity(%(m)s)",
        {"m": model},
    ).fetchone()
    assert row == (
        family.dimensions.get(model.rsplit("/", 1)[-1]),
        family.query_instruction,
        family.passage_instruction,
        family.min_similarity,
    )


def test_every_family_is_in_the_catalog(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute("SELECT name FROM rowembed.model_family ORDER BY rank").fetchall()
    assert [name for (name,) in rows] == [f.name for f in FAMILIES]
    assert family_of("BAAI/bge-base-en-v1.5").query_instruction == BGE_QUERY_INSTRUCTION


def test_a_model_directory_without_pooling_files_pools_as_its_family(tmp_path: Path) -> None:
    """bge's CLS pooling, though the directory has no sentence-transformers files
    (a bare encoder would otherwise get mean pooling)."""
    source = bundled_model_path(MODEL)
    assert source is not None
    bare = tmp_path / "bge-small-en-v1.5"
    bare.mkdir()
    for f in source.iterdir():
        if f.is_file() and f.name not in {"modules.json", "sentence_bert_config.json"}:
            shutil.copy(f, bare / f.name)
    encoder = Encoder.load(str(bare), device="cpu")
    assert encoder.pooling.mode == "cls"
    assert encoder.max_length == 512
    text = "the family decides the pooling"
    ids = torch.tensor([encoder.tokenize([text]).ids[0]])
    with torch.inference_mode():
        cls = encoder.model(input_ids=ids).last_hidden_state[0, 0].numpy()
    assert np.abs(encoder.encode([text]).vectors[0] - cls / np.linalg.norm(cls)).max() < 1e-5
