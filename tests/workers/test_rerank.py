"""Rerank and query embedding through real workers, beside a busy backfill."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from rowembed import WorkerModels, search
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.settings import Settings
from rowembed.workers.celery_app import make_app
from rowembed.workers.runtime import Encoder, Reranker

from ..conftest import MODEL, Stack, wait_until

TOPICS = [
    "cats sleep in the sun",
    "bond markets and interest rates",
    "baking sourdough bread",
    "mountain hiking trails",
    "compilers and parsers",
]


# A backlog big enough to keep a worker busy: with the soak tests.
@pytest.mark.soak
def test_rerank_is_served_while_the_embed_queue_is_busy(
    stack: Stack, encoder: Encoder, cross_encoder_dir: Path
) -> None:
    rng = random.Random(3)
    with connect(stack.pg.url) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        # A searchable set, embedded before the backlog arrives.
        for i in range(40):
            conn.execute(
                "INSERT INTO notes VALUES (%s, %s)",
                [i, f"{TOPICS[i % 5]}: note {i} " + " ".join(rng.sample(TOPICS, 2))],
            )
        v = create_vectorizer(
            conn, "notes", ["body"], model=MODEL, rerank_model=str(cross_encoder_dir)
        )
        stack.worker("embedder", args=("--queues", "embed"), env={"ROWEMBED_BATCH_ROWS": "64"})
        wait_until(
            lambda: conn.execute("SELECT queued + in_flight = 0 FROM rowembed.status()").fetchone()[
                0
            ],
            timeout=60,
        )
        # A backfill-sized backlog of long rows keeps the embed queue busy.
        conn.execute(
            "INSERT INTO notes SELECT i, repeat('filler text for the backlog ', 40) || i"
            " FROM generate_series(1000, 3999) i"
        )
        stack.worker("interactive", args=("--queues", "rerank,query"))
        wait_until(
            lambda: conn.execute("SELECT in_flight > 0 FROM rowembed.status()").fetchone()[0],
            timeout=60,
        )

        models = WorkerModels(make_app(Settings(redis_url=stack.redis.url)), timeout=60)
        started = time.monotonic()
        hits = search(
            conn, v, "where do cats nap", models, k=5, rerank=True, candidates=20, min_similarity=-1
        )
        seconds = time.monotonic() - started
        backlog = conn.execute("SELECT queued + in_flight FROM rowembed.status()").fetchone()[0]
        assert backlog > 0, "the backfill finished first; the test proves nothing"
        assert seconds < 30

        # The query vector is the model's, with the vectorizer's instruction.
        vector = models.encode_query(v.model, "where do cats nap")
        assert np.abs(vector - encoder.encode(["where do cats nap"]).vectors[0]).max() < 1e-5
        # The order is the cross-encoder's, with its scores.
        reranker = Reranker.load(str(cross_encoder_dir), device="cpu")
        # The reranker read each row's embedded text (one text column here).
        assert [h.text for h in hits] == [h.row["body"] for h in hits]
        scores = reranker.score("where do cats nap", [h.row["body"] for h in hits]).scores
        assert [h.rerank_score for h in hits] == sorted(
            (h.rerank_score for h in hits), reverse=True
        )
        assert np.allclose([h.rerank_score for h in hits], scores, atol=1e-5)
        assert len(hits) == 5
