"""The generated trigger functions (sql/040-capture.sql) serve their own table only."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import create_vectorizer
from rowembed.pgplugin.vectorizers import Vectorizer

Conn = psycopg.Connection[Any]
EVENTS = ("inserted", "updated", "deleted", "truncated")


def vectorized(conn: Conn, table: str) -> Vectorizer:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(t))
    v = create_vectorizer(conn, table, ["body"], model="m", dimensions=3)
    conn.execute(
        sql.SQL("INSERT INTO {} (id, embedding, text_hash) VALUES (1, '[1,0,0]', 'x')").format(
            v.destination
        )
    )
    return v


def counts(conn: Conn, v: Vectorizer) -> tuple[int, int]:
    """(queued entries, embeddings)"""
    row = conn.execute(
        sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(
            v.queue, v.destination
        )
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_no_other_role_may_execute_the_generated_functions(conn: Conn, table: str) -> None:
    """Else any role with USAGE on schema rowembed could attach them (SECURITY
    DEFINER) to a table of its own and wipe another owner's embeddings."""
    v = vectorized(conn, table)
    intruder = f"intruder_{v.id}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(intruder)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA rowembed TO {}").format(sql.Identifier(intruder)))
    for event in EVENTS:
        function = f"{v.queue_schema}.rowembed_vz_{v.id}_{event}()"
        assert conn.execute(
            "SELECT has_function_privilege(%s, %s, 'EXECUTE')", [intruder, function]
        ).fetchone() == (False,), function
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(intruder)))
        conn.execute("CREATE TEMP TABLE mine (id int)")
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER wipe AFTER TRUNCATE ON mine FOR EACH STATEMENT"
                " EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_truncated"))
        )
    assert counts(conn, v) == (2, 1)


@pytest.mark.parametrize(
    ("event", "trigger", "statement"),
    [
        ("truncated", "AFTER TRUNCATE ON {} FOR EACH STATEMENT", "TRUNCATE {}"),
        (
            "deleted",
            "AFTER DELETE ON {} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
            "DELETE FROM {}",
        ),
        (
            "inserted",
            "AFTER INSERT ON {} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
            "INSERT INTO {} VALUES (2, 'forged')",
        ),
        ("updated", "AFTER UPDATE ON {} FOR EACH ROW", "UPDATE {} SET body = 'forged'"),
    ],
)
def test_a_generated_function_fires_for_its_own_table_only(
    conn: Conn, table: str, event: str, trigger: str, statement: str
) -> None:
    v = vectorized(conn, table)
    other = sql.Identifier(f"{table}_other")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(other))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one')").format(other))
    conn.execute(
        sql.SQL("CREATE TRIGGER forged " + trigger + " EXECUTE FUNCTION {}()").format(
            other, sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_{event}")
        )
    )
    with pytest.raises(psycopg.errors.RaiseException, match="serves"):
        conn.execute(sql.SQL(statement).format(other))
    assert counts(conn, v) == (2, 1)
