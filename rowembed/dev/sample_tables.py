"""The application's side of the demo and the bench: the tables they create and
write, as any application would. rowembed's own SQL is reached through
rowembed.pgplugin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]


def create_text_table(conn: Conn, name: str, texts: Sequence[str]) -> None:
    """A fresh table `name` (id int primary key, body text), row i holding texts[i]."""
    table = sql.Identifier(name)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(table))
        with conn.cursor().copy(sql.SQL("COPY {} (id, body) FROM STDIN").format(table)) as copy:
            for i, text in enumerate(texts):
                copy.write_row((i, text))


def create_docstring_table(conn: Conn, name: str, docs: Sequence[Any]) -> None:
    """A fresh table `name` (id, module, qualname, docstring) of corpus.Docstring rows."""
    table = sql.Identifier(name)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(table))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " module text NOT NULL, qualname text NOT NULL, docstring text NOT NULL)"
            ).format(table)
        )
        copy_in = sql.SQL("COPY {} (module, qualname, docstring) FROM STDIN").format(table)
        with conn.cursor().copy(copy_in) as copy:
            for d in docs:
                copy.write_row((d.module, d.qualname, d.text))


def drop_table(conn: Conn, name: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def insert_statement(schema: str, name: str) -> sql.Composed:
    """INSERT of (id, body); parameters: id, body."""
    return sql.SQL("INSERT INTO {} (id, body) VALUES (%s, %s)").format(sql.Identifier(schema, name))


def update_statement(schema: str, name: str) -> sql.Composed:
    """UPDATE of one row's body; parameters: body, id."""
    return sql.SQL("UPDATE {} SET body = %s WHERE id = %s").format(sql.Identifier(schema, name))


def set_column(conn: Conn, name: str, column: str, value: Any, key: int) -> None:
    """UPDATE name SET column = value WHERE id = key."""
    conn.execute(
        sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(
            sql.Identifier(name), sql.Identifier(column)
        ),
        [value, key],
    )


def delete_row(conn: Conn, name: str, key: int) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(name)), [key])


def first_row_except(conn: Conn, name: str, column: str, excluded: str) -> tuple[Any, Any]:
    """(id, column) of the first row, by id, whose `column` is not `excluded`."""
    row = conn.execute(
        sql.SQL("SELECT id, {col} FROM {table} WHERE {col} <> %s ORDER BY id LIMIT 1").format(
            col=sql.Identifier(column), table=sql.Identifier(name)
        ),
        [excluded],
    ).fetchone()
    if row is None:
        raise LookupError(f"{name} has no row whose {column} is not {excluded!r}")
    return row[0], row[1]


def insert_texts(conn: Conn, name: str, texts: Sequence[str], first_id: int = 0) -> None:
    """Rows (first_id + i, texts[i]) into an existing text table, in one COPY."""
    copy_in = sql.SQL("COPY {} (id, body) FROM STDIN").format(sql.Identifier(name))
    with conn.cursor().copy(copy_in) as copy:
        for i, text in enumerate(texts):
            copy.write_row((first_id + i, text))
