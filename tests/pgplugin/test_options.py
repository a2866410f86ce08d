"""A vectorizer's options are declared once (pgplugin/options.py): the SQL
functions take exactly those, the CLI's flags come from them, and the options
only queries read change in place."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.cli import build_parser
from rowembed.pgplugin import alter_vectorizer, create_vectorizer
from rowembed.pgplugin.options import ALTER_OPTIONS, CREATE_OPTIONS, OPTIONS
from rowembed.pgplugin.vectorizers import get_vectorizer, list_vectorizers

from ..conftest import MODEL

Conn = psycopg.Connection[Any]


def arguments(conn: Conn, function: str) -> list[str]:
    (names,) = conn.execute(
        "SELECT proargnames FROM pg_proc WHERE oid = %s::regproc", [f"rowembed.{function}"]
    ).fetchone()  # type: ignore[misc]
    return list(names)


def test_the_sql_functions_take_the_declared_options(conn: Conn) -> None:
    assert arguments(conn, "create_vectorizer") == ["source", "text_columns", *CREATE_OPTIONS]
    assert sorted(arguments(conn, "alter_vectorizer")) == sorted(["name", *ALTER_OPTIONS])


def test_the_cli_flags_are_the_declared_options() -> None:
    args = build_parser().parse_args(
        ["alter", "docs", "--rerank-model", "m2", "--chunk-tokens", "64", "--storage", "halfvec"]
    )
    assert (args.rerank_model, args.chunk_tokens, args.storage) == ("m2", 64, "halfvec")
    flags = {o.name for o in OPTIONS if o.alter}
    assert flags <= set(vars(args))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["alter", "docs", "--storage", "float16"])


def test_options_only_queries_read_change_in_place(conn: Conn, table: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    same = alter_vectorizer(
        conn, table, rerank_model="another/reranker", max_attempts=9, min_similarity=0.42
    )
    assert same.id == v.id and not [z for z in list_vectorizers(conn) if z.replaces == table]
    assert (same.rerank_model, same.max_attempts, same.min_similarity) == (
        "another/reranker",
        9,
        0.42,
    )
    with pytest.raises(psycopg.errors.RaiseException, match="max_attempts"):
        alter_vectorizer(conn, table, max_attempts=0)
    # A rebuild option builds a replacement, which takes the in-place ones along.
    next_ = alter_vectorizer(conn, table, storage="halfvec", rerank_model="third/reranker")
    assert next_.id != v.id and next_.replaces == table
    assert next_.rerank_model == "third/reranker"
    assert get_vectorizer(conn, table).rerank_model == "another/reranker"


@pytest.mark.parametrize("chunking", ["tokens", "none"])
@pytest.mark.parametrize("max_chunks", [0, 1001])
def test_max_chunks_is_bounded(conn: Conn, table: str, max_chunks: int, chunking: str) -> None:
    """Refused in one line whether or not the vectorizer is chunked (a raw
    CheckViolation before, with chunking none)."""
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    with pytest.raises(psycopg.errors.RaiseException, match="max_chunks must be from 1 to 1000"):
        create_vectorizer(
            conn, table, ["body"], model=MODEL, chunking=chunking, max_chunks=max_chunks
        )


def test_a_bytea_column_is_refused_not_embedded_as_hex(conn: Conn, table: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, blob bytea)").format(
            sql.Identifier(table)
        )
    )
    with pytest.raises(psycopg.errors.RaiseException, match=r"column blob of .* is bytea"):
        create_vectorizer(conn, table, ["body", "blob"], model=MODEL)
