"""Search over a chunked vectorizer: rows, not chunks, each with its best chunk;
k rows whatever the number of chunks per row; what truncation hides is found."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL

Conn = psycopg.Connection[Any]

TOPICS = [
    "the tax code of small businesses and the forms they file each spring",
    "the migration of birds across the northern sea in autumn",
    "the rules of chess openings and the theory of the middle game",
    "the maintenance of diesel engines in fishing boats",
    "the history of printing presses in medieval towns",
    "the care of orchids grown indoors under artificial light",
]


def long_text(topic: str, sentences: int = 60) -> str:
    """About 700 tokens on one topic."""
    return " ".join(f"Note {i} is one more remark on {topic}." for i in range(sentences))


def embed_all(conn: Conn, v: Vectorizer, encoder: Encoder) -> None:
    while run_batch(conn, Queue(v), encoder, limit=100, lease_seconds=60).claimed:
        pass


@pytest.fixture
def docs(conn: Conn, table: str) -> sql.Identifier:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    return t


def search(conn: Conn, t: sql.Identifier, name: str, vector: Any, k: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL(
            "SELECT (item).id, similarity, chunk, chunk_start, chunk_end, snippet"
            " FROM rowembed.search(NULL::{}, %s, %s, -1, vectorizer => %s)"
        ).format(t),
        [vector, k, name],
    ).fetchall()


def test_what_truncation_hides_a_chunked_search_finds(
    conn: Conn, table: str, docs: sql.Identifier, encoder: Encoder
) -> None:
    # The answer sits past the model's first 512 tokens of row 4; row 9 starts on
    # the question's subject (soup) and says nothing of the answer.
    fact = "The lighthouse keeper's famous fish soup gets its colour from saffron."
    bodies = {i: long_text(topic) for i, topic in enumerate(TOPICS)}
    bodies[4] = long_text(TOPICS[4]) + " " + fact
    bodies[9] = "Soup kitchens feed people in winter. " + long_text("soup kitchens in winter")
    for key, body in bodies.items():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(docs), [key, body])
    whole = create_vectorizer(conn, table, ["body"], model=MODEL, name=f"{table}_whole")
    chunked = create_vectorizer(
        conn,
        table,
        ["body"],
        model=MODEL,
        name=f"{table}_chunked",
        destination=f"{table}_chunks",
        chunking="tokens",
        chunk_tokens=128,
    )
    embed_all(conn, whole, encoder)
    embed_all(conn, chunked, encoder)
    query = encoder.encode(["what gives the lighthouse keeper's fish soup its colour?"]).vectors[0]

    assert search(conn, docs, whole.name, query, 1)[0][0] != 4  # the fact was cut off
    key, _, chunk, start, end, snippet = search(conn, docs, chunked.name, query, 1)[0]
    assert (key, chunk) == (4, max_chunk(conn, chunked, 4))
    assert "saffron" in snippet and snippet == bodies[4][start:end]
    # search_text's and hybrid's shapes carry the chunk too (their own tests run workers).
    rows = search(conn, docs, whole.name, query, 3)
    assert all(r[2] is None and r[5] is None for r in rows)


def max_chunk(conn: Conn, v: Vectorizer, key: int) -> int:
    found = conn.execute(
        sql.SQL("SELECT max(chunk) FROM {} WHERE id = %s").format(v.destination), [key]
    ).fetchone()
    assert found is not None
    return int(found[0])


def test_k_rows_come_back_however_many_chunks_each_row_has(
    conn: Conn, table: str, docs: sql.Identifier, encoder: Encoder
) -> None:
    # Row 0's forty chunks are all nearer the query than any other row.
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (0, %s)").format(docs),
        [long_text("cats purring on a warm windowsill", 240)],
    )
    for key in range(1, 30):
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(docs),
            [key, f"Row {key}: {TOPICS[key % len(TOPICS)]}."],
        )
    v = create_vectorizer(conn, table, ["body"], model=MODEL, chunking="tokens", chunk_tokens=32)
    embed_all(conn, v, encoder)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.destination)).fetchone()[0] > 80  # type: ignore[index]
    query = encoder.encode(["a cat purring on a windowsill"]).vectors[0]
    rows = search(conn, docs, v.name, query, 5)
    keys = [r[0] for r in rows]
    assert len(keys) == 5 and len(set(keys)) == 5 and keys[0] == 0
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    # similar(): rows like row 0 by the mean of its chunks, row 0 left out, one per row.
    similar = conn.execute(
        sql.SQL(
            "SELECT (s.similar_item).id FROM {} AS d, rowembed.similar(d, 5, -1) AS s"
            " WHERE d.id = 0"
        ).format(docs)
    ).fetchall()
    assert len(similar) == 5 and 0 not in {r[0] for r in similar}
    assert len({r[0] for r in similar}) == 5
