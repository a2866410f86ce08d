"""create_vectorizer and change capture, checked in the database (no worker)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.pgplugin import create_vectorizer, drop_vectorizer, get_vectorizer
from rowembed.pgplugin.vectorizers import Vectorizer

from ..conftest import MODEL

Conn = psycopg.Connection[Any]


def make_docs(conn: Conn, table: str, rows: int = 3) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY, title text, body text, views int DEFAULT 0)"
        ).format(sql.Identifier(table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, title, body) SELECT i, 'title ' || i, 'body ' || i"
            " FROM generate_series(1, %s) i"
        ).format(sql.Identifier(table)),
        [rows],
    )


def queue(conn: Conn, v: Vectorizer) -> dict[Any, tuple[int, int]]:
    """key -> (seq, priority)"""
    keys = sql.SQL(", ").join(map(sql.Identifier, v.pk_columns))
    conn.execute("SELECT rowembed.fold_changes()")  # the triggers' change log first
    rows = conn.execute(sql.SQL("SELECT ({}), seq, priority FROM {}").format(keys, v.queue))
    return {r[0]: (r[1], r[2]) for r in rows.fetchall()}


def fake_embedding(conn: Conn, v: Vectorizer, key: int) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (id, embedding, text_hash) VALUES (%s, %s, 'x')").format(
            v.destination
        ),
        [key, "[" + ",".join(["0.1"] * v.dimensions) + "]"],
    )


def embedded_keys(conn: Conn, v: Vectorizer) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT id FROM {} ORDER BY id").format(v.destination)
        ).fetchall()
    ]


def test_create_queues_existing_rows_behind_live_changes(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["title", "body"], model=MODEL)
    assert v.dimensions == 384
    assert v.min_similarity == 0.3
    assert v.query_instruction == ""
    assert v.destination_table == f"{table}_embeddings"
    assert {k: p for k, (_, p) in queue(conn, v).items()} == {1: 1, 2: 1, 3: 1}
    conn.execute(
        sql.SQL("INSERT INTO {} (id, body) VALUES (4, 'new')").format(sql.Identifier(table))
    )
    assert queue(conn, v)[4][1] == 0
    index = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
        [v.destination_table],
    ).fetchone()
    assert index is not None and "vector_cosine_ops" in index[0]


def test_bge_defaults(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], backfill=False)
    assert (v.model, v.dimensions, v.min_similarity) == ("BAAI/bge-base-en-v1.5", 768, 0.7)
    assert v.query_instruction == "Represent this sentence for searching relevant passages: "
    assert queue(conn, v) == {}


def test_writes_send_no_notify_and_go_to_the_change_log(
    conn: Conn, database_url: str, table: str
) -> None:
    """A NOTIFY in the application's transaction would serialize every writer's
    commit behind PostgreSQL's notify lock, and a queue upsert costs an index
    entry and a row lock: the triggers append to an unindexed log, folded into
    the queue later (the newest change of each key)."""
    make_docs(conn, table, 0)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    t = sql.Identifier(table)

    def logged() -> list[tuple[int, int]]:
        return conn.execute(
            sql.SQL("SELECT id, seq FROM {} ORDER BY seq").format(v.change_log)
        ).fetchall()

    clock = conn.execute("SELECT seq FROM rowembed.change_clock()").fetchone()
    assert clock is not None
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN rowembed")
        conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (1, 'x'), (2, 'y')").format(t))
        conn.execute(sql.SQL("UPDATE {} SET body = 'z' WHERE id = 1").format(t))
        assert list(listener.notifies(timeout=0.5)) == []
    changes = logged()
    assert [k for k, _ in changes] == [1, 2, 1] and changes[0][1] > clock[0]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(v.queue)).fetchone() == (0,)
    after = conn.execute("SELECT seq FROM rowembed.change_clock()").fetchone()
    assert after is not None and after[0] == changes[-1][1]

    assert (v.id, 3) in conn.execute("SELECT * FROM rowembed.fold_changes()").fetchall()
    assert logged() == []
    assert queue(conn, v) == {1: (changes[2][1], 0), 2: (changes[1][1], 0)}
    # A change that commits late carries an older seq: it never replaces a newer entry.
    conn.execute(
        sql.SQL("INSERT INTO {} (id, seq) VALUES (1, %s)").format(v.change_log), [changes[0][1]]
    )
    conn.execute("SELECT rowembed.fold_changes()")
    assert queue(conn, v)[1] == (changes[2][1], 0)


def test_update_of_embedded_text_requeues_and_other_columns_do_not(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["title", "body"], model=MODEL)
    before = queue(conn, v)
    t = sql.Identifier(table)
    conn.execute(sql.SQL("UPDATE {} SET views = views + 1").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = body WHERE id = 2").format(t))  # same value
    assert queue(conn, v) == before
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed' WHERE id = 2").format(t))
    after = queue(conn, v)
    assert after[2][0] > before[2][0] and after[2][1] == 0
    assert after[1] == before[1]


def test_delete_removes_the_embedding_and_the_queue_entry(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    fake_embedding(conn, v, 1)
    fake_embedding(conn, v, 2)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (1, 3)").format(sql.Identifier(table)))
    assert embedded_keys(conn, v) == [2]
    assert set(queue(conn, v)) == {2}


def test_truncate_clears_embeddings_and_queue(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    fake_embedding(conn, v, 1)
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    assert embedded_keys(conn, v) == []
    assert queue(conn, v) == {}


def test_primary_key_change_moves_the_embedding(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    fake_embedding(conn, v, 1)
    conn.execute(sql.SQL("UPDATE {} SET id = 10 WHERE id = 1").format(sql.Identifier(table)))
    assert embedded_keys(conn, v) == [10]
    # The worker finds key 1 gone, and key 10's text unchanged (no model call).
    assert set(queue(conn, v)) == {1, 10}


def test_swapping_primary_keys_does_not_fail_the_writer(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    fake_embedding(conn, v, 1)
    fake_embedding(conn, v, 2)
    t = sql.Identifier(table)
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(t, sql.Identifier(f"{table}_pkey"))
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED").format(t)
    )
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE {} SET id = 3 - id WHERE id IN (1, 2)").format(t))
    # Whatever embeddings survived the shuffle, both keys are re-checked by the worker,
    # which compares each stored hash with the current text.
    assert set(queue(conn, v)) == {1, 2}


def test_composite_key_and_names_that_need_quoting(conn: Conn) -> None:
    conn.execute('CREATE SCHEMA IF NOT EXISTS "Odd Schema"')
    conn.execute(
        'CREATE TABLE "Odd Schema"."My ""Docs"" Table" ("Doc Id" int, "Part" text,'
        ' "Body Text" text, PRIMARY KEY ("Doc Id", "Part"))'
    )
    conn.execute(
        """INSERT INTO "Odd Schema"."My ""Docs"" Table" VALUES (1, 'a', 'x'), (1, 'b', 'y')"""
    )
    v = create_vectorizer(
        conn, '"Odd Schema"."My ""Docs"" Table"', ["Body Text"], model=MODEL, name="odd docs"
    )
    assert v.pk_columns == ["Doc Id", "Part"]
    assert v.destination_schema == "Odd Schema"
    assert v.destination_table == 'My "Docs" Table_embeddings'
    assert set(queue(conn, v)) == {("1", "a"), ("1", "b")}
    assert get_vectorizer(conn, "odd docs") == v


@pytest.mark.parametrize(
    ("source", "columns", "options", "error"),
    [
        ("no_pk_table", ["body"], {}, "has no primary key"),
        ("pk_table", ["nope"], {}, "has no column nope"),
        ("pk_table", ['body"; DROP TABLE pk_table; --'], {}, "has no column"),
        ("pk_table; DROP TABLE pk_table", ["body"], {}, "invalid name syntax"),
        ('"pk_table; DROP TABLE pk_table"', ["body"], {}, "does not exist"),
        ("pk_table", [], {}, "at least one column"),
        ("pk_table", ["body"], {"model": "acme/unknown"}, "unknown output size"),
        ("pk_table", ["body"], {"embedding_column": "seq"}, "reserved"),
        ("pk_table", ["body"], {"destination": "a.b.c"}, r"not \[schema.\]table"),
        ("pk_table", ["body"], {"destination": "pk_table"}, "already exists"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    conn: Conn, source: str, columns: list[str], options: dict[str, Any], error: str
) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS no_pk_table (body text)")
    conn.execute("CREATE TABLE IF NOT EXISTS pk_table (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.Error, match=error):
        create_vectorizer(conn, source, columns, **{"model": MODEL, **options})
    assert conn.execute("SELECT to_regclass('pk_table')").fetchone() == ("pk_table",)
    assert conn.execute(
        "SELECT count(*) FROM rowembed.vectorizer WHERE source = 'pk_table'::regclass"
    ).fetchone() == (0,)


def test_application_roles_need_no_rowembed_privileges(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL, backfill=False)
    t = sql.Identifier(table)
    conn.execute("DROP ROLE IF EXISTS app_writer")
    conn.execute("CREATE ROLE app_writer")
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO app_writer").format(t))
    with conn.transaction():
        conn.execute("SET LOCAL ROLE app_writer")
        conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (50, 'x')").format(t))
        conn.execute(sql.SQL("UPDATE {} SET body = 'y' WHERE id = 1").format(t))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(sql.SQL("SELECT * FROM {}").format(v.queue))
    assert set(queue(conn, v)) == {50, 1}


def test_drop_removes_triggers_queue_and_destination(conn: Conn, table: str) -> None:
    make_docs(conn, table)
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    drop_vectorizer(conn, v.name)
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [table]
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT to_regclass(%s), to_regclass(%s)",
        [f"rowembed.{v.queue_table}", v.destination_table],
    ).fetchone() == (None, None)
    conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (99)").format(sql.Identifier(table)))


@pytest.mark.parametrize("which", ["parent", "partition"])
def test_partitioned_tables_and_partitions_are_refused(conn: Conn, table: str, which: str) -> None:
    """Statements on a partition and rows moving between partitions would escape
    the parent's triggers: refused rather than silently missed."""
    parent, part = sql.Identifier(table), sql.Identifier(f"{table}_1")
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)").format(
            parent
        )
    )
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (0) TO (100)").format(part, parent)
    )
    name = table if which == "parent" else f"{table}_1"
    with pytest.raises(psycopg.errors.RaiseException, match="is partitioned or a partition"):
        create_vectorizer(conn, name, ["body"], model=MODEL)


def test_dropping_a_vectorizer_says_nothing_of_what_it_never_had(conn: Conn, table: str) -> None:
    """No "function ..._document() does not exist, skipping" NOTICEs."""
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(table))
    )
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("SELECT rowembed.drop_vectorizer(%s)", [v.name])
    assert notices == []
