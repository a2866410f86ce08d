"""rowembed.search / similar / explain_search on a small real corpus."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed import embed_query, search_vector
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL

Conn = psycopg.Connection[Any]
QUERIES = [
    "send an email message to a mail server",
    "compress data",
    "parse JSON documents",
    "run a command in a child process",
]


@pytest.fixture(scope="module")
def corpus(database_url: str, encoder: Encoder) -> tuple[Vectorizer, dict[int, np.ndarray]]:
    """Module docstrings of the standard library, embedded through the pipeline."""
    from rowembed.pgplugin import connect

    docs = [d for d in stdlib_docstrings(1000) if d.qualname == d.module]
    with connect(database_url) as conn:
        conn.execute(
            "CREATE TABLE search_docs (id int PRIMARY KEY, module text, doc text, category text)"
        )
        with conn.cursor().copy("COPY search_docs FROM STDIN") as copy:
            for i, d in enumerate(docs):
                copy.write_row((i, d.module, d.text, "even" if i % 2 == 0 else "odd"))
        v = create_vectorizer(conn, "search_docs", ["module", "doc"], model=MODEL)
        while run_batch(conn, Queue(v), encoder, limit=64, lease_seconds=60).claimed:
            pass
        rows = conn.execute("SELECT id, embedding FROM search_docs_embeddings").fetchall()
    return v, {key: vec.to_numpy() for key, vec in rows}


def brute_force(vectors: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    keys = list(vectors)
    sims = np.stack([vectors[key] for key in keys]) @ query
    return [keys[i] for i in np.argsort(-sims)[:k]]


@pytest.mark.parametrize("text", QUERIES)
def test_search_returns_the_true_nearest_neighbours(
    conn: Conn, corpus: Any, encoder: Encoder, text: str
) -> None:
    v, vectors = corpus
    query = embed_query(encoder, v, text)
    hits = search_vector(conn, v, query, k=5, min_similarity=-1)
    assert [h.row["id"] for h in hits] == brute_force(vectors, query, 5)
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert np.allclose(sims, [float(vectors[h.row["id"]] @ query) for h in hits], atol=1e-5)


def test_the_obvious_module_comes_first(conn: Conn, corpus: Any, encoder: Encoder) -> None:
    v, _ = corpus
    for text, module in [(QUERIES[0], "smtplib"), (QUERIES[2], "json")]:
        hits = search_vector(conn, v, embed_query(encoder, v, text), k=3, min_similarity=-1)
        assert module in [h.row["module"] for h in hits]


def test_rows_come_back_whole(conn: Conn, corpus: Any, encoder: Encoder) -> None:
    v, _ = corpus
    hits = search_vector(conn, v, embed_query(encoder, v, QUERIES[1]), k=1, min_similarity=-1)
    assert set(hits[0].row) == {"id", "module", "doc", "category"}


def test_thresholds_call_then_session_then_table(conn: Conn, corpus: Any, encoder: Encoder) -> None:
    v, vectors = corpus
    query = embed_query(encoder, v, QUERIES[0])
    sims = sorted((float(vec @ query) for vec in vectors.values()), reverse=True)

    def count(min_similarity: float | None = None) -> int:
        return len(search_vector(conn, v, query, k=100, min_similarity=min_similarity))

    assert count() == sum(s >= v.min_similarity for s in sims[:100])  # the table's default
    assert count(-1) == 100
    assert count(sims[2] - 1e-6) == 3
    conn.execute("SELECT set_config('rowembed.min_similarity', %s, false)", [str(sims[4] - 1e-6)])
    try:
        assert count() == 5  # the session's overrides the table's
        assert count(sims[0] - 1e-6) == 1  # the call's overrides the session's
    finally:
        conn.execute("RESET rowembed.min_similarity")
    assert count() == sum(s >= v.min_similarity for s in sims[:100])


def test_similar_uses_the_rows_own_embedding_and_leaves_it_out(conn: Conn, corpus: Any) -> None:
    _, vectors = corpus
    rows = conn.execute(
        "SELECT (s.similar_item).id, s.similarity FROM search_docs d,"
        " rowembed.similar(d, 4, min_similarity => -1) s WHERE d.id = 7"
    ).fetchall()
    assert [r[0] for r in rows] == brute_force(vectors, vectors[7], 5)[1:]


def test_sql_usage_with_a_vector_parameter(conn: Conn, corpus: Any, encoder: Encoder) -> None:
    v, _ = corpus
    query = embed_query(encoder, v, QUERIES[3])
    rows = conn.execute(
        "SELECT (item).module, similarity FROM rowembed.search(NULL::search_docs, %s, 3, -1)",
        [query],
    ).fetchall()
    assert len(rows) == 3 and "subprocess" in [r[0] for r in rows]


def test_errors_name_the_problem(conn: Conn, corpus: Any, table: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, a text, b text)").format(
            sql.Identifier(table)
        )
    )
    vec = "[" + ",".join(["0.1"] * 384) + "]"
    with pytest.raises(psycopg.Error, match="has no vectorizer"):
        conn.execute(
            sql.SQL("SELECT * FROM rowembed.search(NULL::{}, %s::vector)").format(
                sql.Identifier(table)
            ),
            [vec],
        )
    create_vectorizer(conn, table, ["a"], model=MODEL, name=f"{table}_a")
    create_vectorizer(
        conn, table, ["b"], model=MODEL, name=f"{table}_b", destination=f"{table}_b_embeddings"
    )
    with pytest.raises(psycopg.Error, match="several vectorizers"):
        conn.execute(
            sql.SQL("SELECT * FROM rowembed.search(NULL::{}, %s::vector)").format(
                sql.Identifier(table)
            ),
            [vec],
        )
    conn.execute(
        sql.SQL("SELECT * FROM rowembed.search(NULL::{}, %s::vector, vectorizer => %s)").format(
            sql.Identifier(table)
        ),
        [vec, f"{table}_b"],
    )
    with pytest.raises(psycopg.Error, match="k must be at least 1"):
        conn.execute("SELECT * FROM rowembed.search(NULL::search_docs, %s::vector, 0)", [vec])


@pytest.fixture(scope="module")
def large(database_url: str) -> Vectorizer:
    """10,000 clustered unit vectors written straight into a destination table: enough
    rows for the planner to prefer the HNSW index, as it does in real use."""
    from rowembed.pgplugin import connect

    rng = np.random.default_rng(7)
    centers = rng.normal(size=(30, 384))
    vectors = centers[rng.integers(0, 30, 10_000)] + 0.3 * rng.normal(size=(10_000, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with connect(database_url) as conn:
        conn.execute("CREATE TABLE large_docs (id int PRIMARY KEY, body text, category text)")
        conn.execute(  # 1% of the rows are "rare"
            "INSERT INTO large_docs SELECT i, 'row ' || i,"
            " CASE WHEN i % 100 = 7 THEN 'rare' ELSE 'common' END FROM generate_series(0, 9999) i"
        )
        v = create_vectorizer(conn, "large_docs", ["body"], model=MODEL, backfill=False)
        with conn.cursor().copy(
            sql.SQL("COPY {} (id, embedding, text_hash) FROM STDIN (FORMAT BINARY)").format(
                v.destination
            )
        ) as copy:
            copy.set_types(["int4", "vector", "bytea"])
            for i, vec in enumerate(vectors):
                copy.write_row((i, vec.astype(np.float32), b"x"))
        conn.execute("ANALYZE large_docs, large_docs_embeddings")
    return v


def test_search_uses_the_hnsw_index(conn: Conn, large: Vectorizer) -> None:
    vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "SELECT * FROM rowembed.explain_search(NULL::large_docs, %s, 10)", [vec]
        ).fetchall()
    )
    assert f"Index Scan using rowembed_{large.id}_vector_idx" in plan, plan


def test_k_above_the_default_ef_search_returns_k_rows(conn: Conn, large: Vectorizer) -> None:
    vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    rows = conn.execute(
        "SELECT count(*) FROM rowembed.search(NULL::large_docs, %s, 150, -1)", [vec]
    ).fetchone()
    assert rows == (150,)
    assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("40",)  # restored after the call


def test_a_selective_filter_still_returns_k_rows(conn: Conn, large: Vectorizer) -> None:
    """1% of the rows pass the filter; k rows come back, whichever plan answers."""
    (vec,) = conn.execute("SELECT embedding FROM large_docs_embeddings WHERE id = 7").fetchone()
    search = (
        "SELECT (item).id, (item).category, similarity FROM rowembed.search(NULL::large_docs,"
        ' %s, 10, -1, filter => \'{"category": "rare"}\')'
    )
    exact = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM large_docs_embeddings e JOIN large_docs d USING (id)"
            " WHERE d.category = 'rare' ORDER BY e.embedding <=> %s LIMIT 10",
            [vec],
        ).fetchall()
    ]

    def check(rows: list[Any]) -> None:
        assert [r[1] for r in rows] == ["rare"] * 10
        sims = [r[2] for r in rows]
        assert sims == sorted(sims, reverse=True)
        assert len({r[0] for r in rows} & set(exact)) >= 9  # recall of the approximate index

    check(conn.execute(search, [vec]).fetchall())  # here the planner scans the rare rows
    # On large tables the planner walks the HNSW index instead, and the iterative
    # scan keeps going until k rows pass the filter (without it, ef_search = 40
    # candidates hold about 0.4 rare rows). Force that plan and check it too.
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        check(conn.execute(search, [vec]).fetchall())
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "SELECT * FROM rowembed.explain_search(NULL::large_docs, %s, 10,"
                ' filter => \'{"category": "rare"}\')',
                [vec],
            ).fetchall()
        )
    assert f"Index Scan using rowembed_{large.id}_vector_idx" in plan, plan
    assert conn.execute("SHOW hnsw.iterative_scan").fetchone() == ("off",)  # restored


def test_similarity_profile_separates_neighbours_from_random_rows(
    conn: Conn, corpus: Any, encoder: Encoder
) -> None:
    from rowembed.pgplugin.search import similarity_profile, suggest_min_similarity

    v, _ = corpus
    own = similarity_profile(conn, v.name, sample=60, k=5)
    assert (own["top1"].n, own["topk"].n, own["random"].n) == (60, 300, 3600)
    assert own["top1"].p50 > own["topk"].p50 > own["random"].p50
    queries = [embed_query(encoder, v, text) for text in QUERIES]
    asked = similarity_profile(conn, v.name, queries, sample=60, k=5)
    assert asked["top1"].n == len(QUERIES)
    assert asked["top1"].p10 > asked["random"].p50
    assert -1 <= suggest_min_similarity(asked) <= 1


@pytest.mark.parametrize(
    ("setting", "k", "width"),
    [
        (None, 10, "200"),
        (None, 150, "300"),
        (None, 900, "1000"),
        ("40", 10, "40"),
        ("40", 50, "100"),
    ],
)
def test_the_hnsw_search_width_favours_recall_by_default(
    conn: Conn, setting: str | None, k: int, width: str
) -> None:
    with conn.transaction():
        if setting is not None:
            conn.execute("SELECT set_config('rowembed.ef_search', %s, true)", [setting])
        assert conn.execute("SELECT rowembed._ef_search_for(%s)", [k]).fetchone() == (width,)
