"""Vectorizers from Python: thin calls to the SQL API, and the catalog as dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from ._call import call, scalar
from .options import ALTER_OPTIONS, CREATE_OPTIONS, given


@dataclass(frozen=True)
class Vectorizer:
    id: int
    name: str
    source_schema: str
    source_table: str
    pk_columns: list[str]
    text_columns: list[str]
    separator: str
    model: str
    dimensions: int
    destination_schema: str
    destination_table: str
    embedding_column: str
    queue_schema: str
    queue_table: str
    min_similarity: float
    query_instruction: str
    passage_instruction: str
    rerank_model: str
    max_attempts: int
    storage: str
    index_method: str
    index_state: str
    problem: str | None  # why it cannot work now (rowembed._problem()); None when it can
    chunking: str = "none"  # 'tokens': rows embedded in chunks, one destination row each
    chunk_tokens: int | None = None  # None: the model's limit
    chunk_overlap: int | None = None  # None: an eighth of a chunk
    max_chunks: int = 100
    replaces: str | None = None  # the vectorizer this one is being built to replace
    run_as: str | None = None  # the owner this session acts as on its tables (rowembed._run_as)

    @property
    def chunked(self) -> bool:
        return self.chunking != "none"

    @property
    def source(self) -> sql.Identifier:
        return sql.Identifier(self.source_schema, self.source_table)

    @property
    def destination(self) -> sql.Identifier:
        return sql.Identifier(self.destination_schema, self.destination_table)

    @property
    def queue(self) -> sql.Identifier:
        return sql.Identifier(self.queue_schema, self.queue_table)

    @property
    def change_log(self) -> sql.Identifier:
        """Where the triggers log INSERTs and UPDATEs until folded into the queue."""
        return sql.Identifier(self.queue_schema, f"rowembed_changes_{self.id}")


class VectorizerNotFound(LookupError):
    pass


_SELECT = sql.SQL("""
    SELECT v.id, v.name, sn.nspname::text AS source_schema, sc.relname::text AS source_table,
           v.pk_columns::text[] AS pk_columns, v.text_columns::text[] AS text_columns,
           v.separator, v.model, v.dimensions,
           dn.nspname::text AS destination_schema, dc.relname::text AS destination_table,
           v.embedding_column::text AS embedding_column,
           qn.nspname::text AS queue_schema, qc.relname::text AS queue_table,
           v.min_similarity, v.query_instruction, v.passage_instruction, v.rerank_model,
           v.max_attempts, v.storage, v.index_method, v.index_state,
           rowembed._problem(v) AS problem, v.chunking, v.chunk_tokens, v.chunk_overlap,
           v.max_chunks, (SELECT r.name FROM rowembed.vectorizer r WHERE r.id = v.replaces)
               AS replaces, rowembed._run_as(v.id) AS run_as
    FROM rowembed.vectorizer v
    JOIN pg_class sc ON sc.oid = v.source JOIN pg_namespace sn ON sn.oid = sc.relnamespace
    JOIN pg_class dc ON dc.oid = v.destination JOIN pg_namespace dn ON dn.oid = dc.relnamespace
    JOIN pg_class qc ON qc.oid = v.queue_table JOIN pg_namespace qn ON qn.oid = qc.relnamespace
""")


def list_vectorizers(conn: psycopg.Connection[Any]) -> list[Vectorizer]:
    with conn.cursor(row_factory=class_row(Vectorizer)) as cur:
        return cur.execute(_SELECT + sql.SQL(" ORDER BY v.id")).fetchall()


def get_vectorizer(conn: psycopg.Connection[Any], key: int | str) -> Vectorizer:
    """By id or by name."""
    where = sql.SQL(" WHERE v.id = %s") if isinstance(key, int) else sql.SQL(" WHERE v.name = %s")
    with conn.cursor(row_factory=class_row(Vectorizer)) as cur:
        found = cur.execute(_SELECT + where, [key]).fetchone()
    if found is None:
        raise VectorizerNotFound(f"no vectorizer {key!r} (or its tables were dropped)")
    return found


def create_vectorizer(
    conn: psycopg.Connection[Any], source: str, text_columns: Sequence[str], **options: Any
) -> Vectorizer:
    """`rowembed.create_vectorizer(...)`; `source` is a table name as SQL reads it
    (`docs`, `app.docs`, `"My Docs"`); options are the SQL function's named arguments."""
    with conn.transaction():
        new_id = scalar(
            conn,
            "create_vectorizer",
            source=source,
            text_columns=list(text_columns),
            **given(options, CREATE_OPTIONS),
        )
    return get_vectorizer(conn, new_id)


def drop_vectorizer(
    conn: psycopg.Connection[Any], name: str, *, drop_destination: bool = True
) -> None:
    with conn.transaction():
        call(conn, "drop_vectorizer", name=name, drop_destination=drop_destination)


def alter_vectorizer(conn: psycopg.Connection[Any], name: str, **options: Any) -> Vectorizer:
    """`rowembed.alter_vectorizer(name, ...)`: the vectorizer itself when only
    options changed in place were given (pgplugin/options.py), else the
    replacement it starts building; searches use `name` as it is until the
    replacement switches in."""
    with conn.transaction():
        new_id = scalar(conn, "alter_vectorizer", name=name, **given(options, ALTER_OPTIONS))
    return get_vectorizer(conn, new_id)


def cancel_alter(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drops `name`'s replacement in progress; whether there was one."""
    with conn.transaction():
        return bool(scalar(conn, "cancel_alter", name=name))


def complete_alters(conn: psycopg.Connection[Any]) -> list[str]:
    """Switches complete replacements in (their tables' owner's right); the names switched."""
    with conn.transaction():
        return [name for (name,) in call(conn, "complete_alters").fetchall()]


def grant(
    conn: psycopg.Connection[Any],
    kind: Literal["creator", "worker", "searcher"],
    role: str,
    vectorizer: str | None = None,
) -> None:
    """`rowembed.grant_<kind>(role[, vectorizer])`: what the README's Privileges
    says a creator, worker or searcher role needs (a worker or searcher: for one
    vectorizer, or all there are now)."""
    args: dict[str, Any] = {"role": role}
    if kind != "creator":
        args["vectorizer"] = vectorizer
    with conn.transaction():
        call(conn, f"grant_{kind}", **args)


def set_min_similarity(conn: psycopg.Connection[Any], name: str, min_similarity: float) -> None:
    call(conn, "set_min_similarity", name=name, min_similarity=float(min_similarity))


def has_embedding(conn: psycopg.Connection[Any], v: Vectorizer, key: dict[str, Any]) -> bool:
    """Whether the row with primary key `key` ({column: value}) has an embedding."""
    match = sql.SQL(" AND ").join(
        sql.SQL("{} = %s").format(sql.Identifier(c)) for c in v.pk_columns
    )
    query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(v.destination, match)
    row = conn.execute(query, [key[c] for c in v.pk_columns]).fetchone()
    return bool(row and row[0])
