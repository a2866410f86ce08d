"""Calls into rowembed's functions bind each argument with its declared type."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from rowembed.pgplugin._call import OverloadedFunction, call, scalar
from rowembed.pgplugin.vectorizers import create_vectorizer

Conn = psycopg.Connection[Any]


def test_arguments_are_sent_with_their_declared_types(own_db: Conn) -> None:
    """psycopg sends a small int as smallint: unbound, an overload of
    (smallint, ...) would be a closer match than the function rowembed made."""
    own_db.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    v = create_vectorizer(own_db, "docs", ["body"], model="m", dimensions=3)
    seen = own_db.execute("SELECT pg_typeof(x)::text FROM (SELECT %s AS x) s", [v.id]).fetchone()
    assert seen == ("smallint",)  # what an unbound argument would be
    sent: list[str] = []
    execute = own_db.execute

    def recording(statement: Any, params: Any = None) -> Any:
        sent.append(statement if isinstance(statement, str) else statement.as_string(own_db))
        return execute(statement, params)

    own_db.execute = recording  # type: ignore[method-assign]
    assert call(own_db, "read_claimed", vectorizer_id=v.id, seqs=[]).fetchall() == []
    assert scalar(own_db, "retry_failed", name=v.name) == 0
    own_db.execute = execute  # type: ignore[method-assign]
    assert [s for s in sent if s.startswith("SELECT * FROM rowembed")] == [
        'SELECT * FROM rowembed."read_claimed"("vectorizer_id" => %s::integer,'
        ' "seqs" => %s::bigint[])',
        'SELECT * FROM rowembed."retry_failed"("name" => %s::text)',
    ]


def test_an_overload_rowembed_did_not_make_is_never_called(own_db: Conn) -> None:
    own_db.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    v = create_vectorizer(own_db, "docs", ["body"], model="m", dimensions=3)
    own_db.execute(
        "CREATE FUNCTION rowembed.read_claimed(vectorizer_id smallint, seqs bigint[])"
        " RETURNS SETOF int LANGUAGE sql AS 'SELECT 1/0'"
    )
    with pytest.raises(OverloadedFunction, match="declared 2 times"):
        call(own_db, "read_claimed", vectorizer_id=v.id, seqs=[])
