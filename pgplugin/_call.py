"""Calls into rowembed's SQL functions, arguments bound by name and by type.

Each argument is sent cast to its parameter's declared type (read once from
pg_proc): psycopg sends a small int as smallint, and an overload closer to what
is sent (smallint, varchar) must never be the one that runs."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import sql


def call(conn: psycopg.Connection[Any], function: str, /, **args: Any) -> psycopg.Cursor[Any]:
    """`SELECT * FROM rowembed.<function>(name => value::type, ...)`: a parameter
    added to the SQL function later cannot silently take another argument's place."""
    types = _parameter_types(conn, function)
    bound = []
    values = []
    for name, value in args.items():
        type_name = types.get(name)
        placeholder = sql.SQL("%s")
        if type_name is not None:
            placeholder = sql.SQL("%s::{}").format(sql.SQL(type_name))
        bound.append(sql.SQL("{} => {}").format(sql.Identifier(name), placeholder))
        values.append(value)
    statement = sql.SQL("SELECT * FROM rowembed.{}({})").format(
        sql.Identifier(function), sql.SQL(", ").join(bound)
    )
    return conn.execute(statement, values)


class OverloadedFunction(RuntimeError):
    """rowembed declares each function once; two of one name are not its own."""


# Per connection (a session sees one database's functions), read once.
_TYPES: WeakKeyDictionary[psycopg.Connection[Any], dict[str, dict[str, str]]] = WeakKeyDictionary()


def _parameter_types(conn: psycopg.Connection[Any], function: str) -> dict[str, str]:
    """Input parameter name -> declared type of rowembed.<function> (polymorphic
    ones left out: their type is the argument's)."""
    known = _TYPES.setdefault(conn, {})
    if function not in known:
        known[function] = _read_parameter_types(conn, function)
    return known[function]


def _read_parameter_types(conn: psycopg.Connection[Any], function: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, u.name, format_type(u.type, NULL),"
        "       EXISTS (SELECT FROM pg_type t WHERE t.oid = u.type AND t.typtype = 'p')"
        "  FROM pg_proc p LEFT JOIN LATERAL unnest("
        "       coalesce(p.proallargtypes, p.proargtypes::oid[]), p.proargnames,"
        "       coalesce(p.proargmodes, array_fill('i'::\"char\", ARRAY[p.pronargs])))"
        "       AS u(type, name, mode) ON u.mode IN ('i', 'b')"
        " WHERE p.pronamespace = 'rowembed'::regnamespace AND p.proname = %s",
        [function],
    ).fetchall()
    signatures = sorted({signature for signature, *_ in rows})
    if len(signatures) > 1:
        raise OverloadedFunction(
            f"rowembed.{function} is declared {len(signatures)} times ({', '.join(signatures)}):"
            " rowembed calls none of them; drop the ones rowembed did not make"
        )
    return {name: type_name for _, name, type_name, polymorphic in rows if name and not polymorphic}


def scalar(conn: psycopg.Connection[Any], function: str, /, **args: Any) -> Any:
    """The single value a function returns."""
    row = call(conn, function, **args).fetchone()
    return None if row is None else row[0]
