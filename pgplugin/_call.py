"""Calls into rowembed's SQL functions, arguments bound by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Cast:
    """An argument sent with an explicit type (`'docs'` as regclass, a list as name[])."""

    value: Any
    type: str


def call(conn: psycopg.Connection[Any], function: str, /, **args: Any) -> psycopg.Cursor[Any]:
    """`SELECT * FROM rowembed.<function>(name => value, ...)`: a parameter added to
    the SQL function later cannot silently take another argument's place."""
    bound = []
    values = []
    for name, value in args.items():
        placeholder = sql.SQL("%s")
        if isinstance(value, Cast):
            placeholder = sql.SQL("%s::{}").format(sql.SQL(value.type))
            value = value.value
        bound.append(sql.SQL("{} => {}").format(sql.Identifier(name), placeholder))
        values.append(value)
    statement = sql.SQL("SELECT * FROM rowembed.{}({})").format(
        sql.Identifier(function), sql.SQL(", ").join(bound)
    )
    return conn.execute(statement, values)


def scalar(conn: psycopg.Connection[Any], function: str, /, **args: Any) -> Any:
    """The single value a function returns."""
    row = call(conn, function, **args).fetchone()
    return None if row is None else row[0]
