"""`rowembed finetune`: the bundled model fine-tuned on pairs from SQL, with
hard negatives from the vectorizer's index, better on held-out pairs, and
switched in through alter_vectorizer while searches keep answering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.sample_pairs import jargon_pairs
from rowembed.dev.sample_tables import create_text_table
from rowembed.finetune import FineTuneOptions, run_finetune
from rowembed.pgplugin import create_vectorizer, get_vectorizer
from rowembed.pgplugin.finetune import PairsError, mine_negatives
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer, complete_alters
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder
from rowembed.workers.runtime.training import TrainingConfig

from ..conftest import MODEL
from .test_cli import rowembed

Conn = psycopg.Connection[Any]
PAIRS = "SELECT query, doc FROM ft_pairs"


def docs_and_pairs(conn: Conn, encoder: Encoder, rows: int) -> Vectorizer:
    texts = [d.text for d in stdlib_docstrings(rows)]
    create_text_table(conn, "ft_docs", texts)
    conn.execute("CREATE TABLE ft_pairs (query text, doc int)")
    with conn.cursor().copy("COPY ft_pairs FROM STDIN") as copy:
        for pair in jargon_pairs(texts):
            copy.write_row(pair)
    v = create_vectorizer(conn, "ft_docs", ["body"], model=MODEL)
    embed(conn, v, encoder)
    return v


def embed(conn: Conn, v: Vectorizer, encoder: Encoder) -> None:
    while run_batch(conn, Queue(v), encoder, limit=256, lease_seconds=600).claimed:
        pass


def search(conn: Conn, vector: Any) -> list[int]:
    statement = "SELECT (item).id FROM rowembed.search(NULL::ft_docs, %s, 5, -1)"
    return [key for (key,) in conn.execute(statement, [vector])]


@pytest.mark.soak
def test_a_fine_tuned_model_finds_more_held_out_answers_and_switches_in(
    own_db: Conn, encoder: Encoder, tmp_path: Path
) -> None:
    v = docs_and_pairs(own_db, encoder, 600)
    output = tmp_path / "model"
    options = FineTuneOptions(
        output=output,
        negatives=1,
        switch_if_better=True,
        device="cpu",
        # Short passages and one negative: a minute on two CPU cores (bench/finetune.py).
        training=TrainingConfig(learning_rate=5e-5, max_passage_tokens=64),
    )
    done = run_finetune(own_db, v.name, PAIRS, options, say=lambda _: None)
    assert done.train_pairs >= 200 and done.held_out_queries >= 40
    # Measured: MRR@10 0.851 -> 0.923, recall@10 0.952 -> 0.984.
    assert done.tuned.mrr > done.base.mrr + 0.03, (done.base, done.tuned)
    assert done.tuned.recall >= done.base.recall, (done.base, done.tuned)
    assert done.report.losses[-1] < done.report.losses[0]
    assert done.switched_to is not None and done.switched_to.model == str(output)
    assert done.switched_to.query_instruction == v.query_instruction

    # The rollout: searches answer from the old embeddings while the new ones are
    # built, the application's writes go on, and the switch brings the new model.
    query = encoder.encode([v.query_instruction + "a gromp of vraks"]).vectors[0]
    assert len(search(own_db, query)) == 5
    own_db.execute("UPDATE ft_docs SET body = body || ' (edited)' WHERE id = 1")
    tuned = Encoder.load(str(output), device="cpu")
    embed(own_db, done.switched_to, tuned)
    assert len(search(own_db, query)) == 5
    assert complete_alters(own_db) == [v.name]
    after = get_vectorizer(own_db, v.name)
    assert after.model == str(output)
    own_db.execute("DELETE FROM ft_docs WHERE id = 2")
    embed(own_db, after, tuned)
    tuned_query = tuned.encode([v.query_instruction + "a gromp of vraks"]).vectors[0]
    found = search(own_db, tuned_query)
    assert len(found) == 5 and 2 not in found


@pytest.mark.soak
def test_the_reranker_fine_tuned_on_the_same_pairs_orders_the_top_k_better(
    own_db: Conn, encoder: Encoder, cross_encoder_dir: Path, tmp_path: Path
) -> None:
    v = docs_and_pairs(own_db, encoder, 300)
    own_db.execute("SELECT rowembed.alter_vectorizer(%s, rerank_model => %s)",
                   [v.name, str(cross_encoder_dir)])  # fmt: skip
    output = tmp_path / "model"
    options = FineTuneOptions(
        output=output,
        negatives=1,
        switch_if_better=True,
        device="cpu",
        training=TrainingConfig(learning_rate=5e-5, max_passage_tokens=64),
        rerank_output=tmp_path / "model-reranker",
        rerank_depth=20,
    )
    done = run_finetune(own_db, v.name, PAIRS, options, say=lambda _: None)
    rerank = done.rerank
    assert rerank is not None and rerank.depth == 20
    # Measured: MRR@10 0.103 -> 0.230, recall@10 0.333 -> 0.700 (the base's head is
    # random: conftest's cross-encoder; bench/finetune.py --rerank prints the figures).
    assert rerank.tuned.mrr > rerank.base.mrr + 0.05, rerank
    assert rerank.tuned.recall > rerank.base.recall, rerank
    assert rerank.report.losses[-1] < rerank.report.losses[0]
    assert (tmp_path / "model-reranker" / "config.json").exists()
    after = done.switched_to
    assert after is not None and after.rerank_model == str(tmp_path / "model-reranker")
    refused = FineTuneOptions(output=tmp_path / "again", rerank_output=tmp_path / "again-r")
    own_db.execute("SELECT rowembed.alter_vectorizer(%s, rerank_model => '')", [v.name])
    with pytest.raises(PairsError, match="has no rerank_model to fine-tune"):
        run_finetune(own_db, v.name, PAIRS, refused, say=lambda _: None)


def test_pairs_that_cannot_be_used_are_refused_in_one_line(
    own_db: Conn, encoder: Encoder, tmp_path: Path
) -> None:
    v = docs_and_pairs(own_db, encoder, 60)
    options = FineTuneOptions(output=tmp_path / "model", device="cpu")

    def refused(pairs: str, name: str = v.name) -> str:
        with pytest.raises(PairsError) as raised:
            run_finetune(own_db, name, pairs, options, say=lambda _: None)
        return str(raised.value)

    assert "at least 20" in refused("SELECT query, doc FROM ft_pairs LIMIT 5")
    assert "keys of the pairs name no row of ft_docs (e.g. 100000, " in refused(
        "SELECT query, doc + 100000 FROM ft_pairs"
    )
    assert "must return two columns" in refused("SELECT doc, query FROM ft_pairs")
    assert "must return two columns" in refused("SELECT query FROM ft_pairs")
    assert "one SELECT" in refused("DELETE FROM ft_pairs RETURNING query, doc")
    assert "one SELECT" in refused("SELECT query, doc FROM ft_pairs; DROP TABLE ft_pairs")
    own_db.execute("CREATE SEQUENCE ft_seq")
    assert "may only read" in refused("SELECT query, doc FROM ft_pairs WHERE nextval('ft_seq') > 0")
    assert own_db.execute("SELECT count(*) > 0 FROM ft_pairs").fetchone() == (True,)
    assert own_db.execute("SELECT last_value, is_called FROM ft_seq").fetchone() == (1, False)
    own_db.execute("CREATE TABLE ft_bare (id int PRIMARY KEY, body text)")
    bare = create_vectorizer(own_db, "ft_bare", ["body"], model=MODEL, index_method="none")
    assert "no vector index" in refused(PAIRS, bare.name)
    assert not (tmp_path / "model").exists()  # nothing trained
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a model someone uses
    assert "is not empty: give the new model a new directory" in refused(PAIRS)
    # From the shell: the same line, exit 2.
    url = own_db.info.dsn
    shell = rowembed(
        "finetune", v.name, "--pairs", "SELECT 1, 2", "--output", str(tmp_path / "m"),
        database_url=url,
    )  # fmt: skip
    assert shell.returncode == 2
    assert shell.stderr.startswith("rowembed: the pairs query must return two columns")
    # On the workers: rowembed.finetune() refuses the same, before any job exists.
    shell = rowembed("finetune", v.name, "--pairs", "SELECT 1, 2", "--on-workers",
                     database_url=url)  # fmt: skip
    assert shell.returncode == 2
    assert shell.stderr.startswith("rowembed: the pairs query must return two columns")
    assert own_db.execute("SELECT count(*) FROM rowembed.training_job").fetchone() == (0,)


def test_hard_negatives_come_from_the_index_window_without_the_positives(
    own_db: Conn, encoder: Encoder
) -> None:
    v = docs_and_pairs(own_db, encoder, 60)
    (text,) = own_db.execute("SELECT body FROM ft_docs WHERE id = 5").fetchone() or ("",)
    query = encoder.encode([v.query_instruction + text]).vectors
    ranked = [str(key) for key in search_k(own_db, query[0], 200)]
    (mined,) = mine_negatives(own_db, v, query, [{ranked[2]}], count=100, ranks=(3, 200))
    # Ranks 1 and 2 are outside the window, rank 3 is a positive: the rest, all of it.
    assert sorted(mined) == sorted(ranked[3:])
    (few,) = mine_negatives(own_db, v, query, [set()], count=3, ranks=(3, 200), seed=1)
    assert len(few) == 3 and set(few) <= set(ranked[2:])


def search_k(conn: Conn, vector: Any, k: int) -> list[int]:
    statement = "SELECT (item).id FROM rowembed.search(NULL::ft_docs, %s, %s, -1)"
    return [key for (key,) in conn.execute(statement, [vector, k])]
