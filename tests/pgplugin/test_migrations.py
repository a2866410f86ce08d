"""The migration runner, each test on a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin.migrations import MigrationError, load_migrations, migrate

from ..conftest import new_database

CATALOG = """
    SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)), p.proconfig::text
    FROM pg_proc p WHERE p.pronamespace = 'rowembed'::regnamespace
    UNION ALL
    SELECT c.relname::text, c.relkind::text, NULL FROM pg_class c
    WHERE c.relnamespace = 'rowembed'::regnamespace
    ORDER BY 1
"""


@pytest.fixture
def fresh(postgres: EmbeddedPostgres) -> Iterator[psycopg.Connection[Any]]:
    with new_database(postgres) as conn:
        yield conn


def test_fresh_install_then_again_is_a_no_op(fresh: psycopg.Connection[Any]) -> None:
    assert migrate(fresh) == [m.version for m in load_migrations()]
    recorded = fresh.execute("SELECT * FROM rowembed.schema_migrations").fetchall()
    catalog = fresh.execute(CATALOG).fetchall()
    assert migrate(fresh) == []
    assert fresh.execute("SELECT * FROM rowembed.schema_migrations").fetchall() == recorded
    assert fresh.execute(CATALOG).fetchall() == catalog


def test_an_edited_applied_migration_is_refused(fresh: psycopg.Connection[Any]) -> None:
    migrate(fresh)
    edited = [
        replace(m, sql=m.sql + "\n-- edited\n") if i == 0 else m
        for i, m in enumerate(load_migrations())
    ]
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        migrate(fresh, edited)


def test_a_database_newer_than_the_code_is_refused(fresh: psycopg.Connection[Any]) -> None:
    migrate(fresh)
    fresh.execute("INSERT INTO rowembed.schema_migrations VALUES ('9999', 'future', 'x')")
    with pytest.raises(MigrationError, match="does not know: 9999"):
        migrate(fresh)


def test_a_failing_migration_leaves_the_database_as_it_was(fresh: psycopg.Connection[Any]) -> None:
    migrate(fresh)
    broken = [
        *load_migrations(),
        replace(
            load_migrations()[0],
            version="9000",
            name="broken",
            sql="CREATE TABLE rowembed.x (); SELECT 1/0;",
        ),
    ]
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(fresh, broken)
    assert fresh.execute("SELECT to_regclass('rowembed.x')").fetchone() == (None,)
    assert fresh.execute("SELECT max(version) FROM rowembed.schema_migrations").fetchone() != (
        "9000",
    )


def test_every_function_pins_search_path(fresh: psycopg.Connection[Any]) -> None:
    migrate(fresh)
    unpinned = fresh.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'rowembed'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
    """).fetchall()
    assert unpinned == []


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [int(m.version) for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


FUNCTIONS = """
    SELECT p.oid::regprocedure::text FROM pg_proc p
    WHERE p.pronamespace = 'rowembed'::regnamespace AND p.proname NOT LIKE '\\_vz\\_%'
    ORDER BY 1
"""


def install_release(conn: psycopg.Connection[Any], release: str) -> None:
    """The database as release `release` left it: its migrations and its functions."""
    released = (Path(__file__).parent / "released" / f"functions_{release}.sql").read_text()
    migrate(conn, [m for m in load_migrations() if m.version <= release], idempotent=released)


@pytest.mark.parametrize("release", ["0001", "0002"])
def test_an_upgraded_database_has_the_functions_of_a_fresh_one(
    fresh: psycopg.Connection[Any], postgres: EmbeddedPostgres, release: str
) -> None:
    install_release(fresh, release)
    migrate(fresh)
    with new_database(postgres) as new:
        migrate(new)
        assert fresh.execute(FUNCTIONS).fetchall() == new.execute(FUNCTIONS).fetchall()


@pytest.mark.parametrize("release", ["0001", "0002"])
def test_an_upgrade_keeps_vectorizers_working(fresh: psycopg.Connection[Any], release: str) -> None:
    """A database set up by an earlier release (its migrations and its functions),
    with a vectorizer and an embedding, then upgraded to this release."""
    import numpy as np

    install_release(fresh, release)
    fresh.execute("CREATE TABLE old_docs (id int PRIMARY KEY, body text)")
    fresh.execute("INSERT INTO old_docs VALUES (1, 'one'), (2, 'two')")
    fresh.execute(
        "SELECT rowembed.create_vectorizer('old_docs', '{body}', model => 'm', dimensions => 3)"
    )
    fresh.execute(
        "INSERT INTO old_docs_embeddings (id, embedding, text_hash) VALUES (1, '[1,0,0]', 'x')"
    )

    assert migrate(fresh) == [m.version for m in load_migrations() if m.version > release]

    assert fresh.execute(
        "SELECT storage, index_method, index_state FROM rowembed.vectorizer"
    ).fetchall() == [("vector", "hnsw", "built")]
    assert fresh.execute("SELECT index FROM rowembed.vectorizer_status").fetchone() == (
        "hnsw: built",
    )
    hits = fresh.execute(
        "SELECT (item).id FROM rowembed.search(NULL::old_docs, %s, 5, -1)",
        [np.array([1, 0, 0], dtype=np.float32)],
    ).fetchall()
    assert hits == [(1,)]
    fresh.execute("DELETE FROM old_docs_embeddings")
    fresh.execute("UPDATE old_docs SET body = 'three' WHERE id = 2")  # triggers regenerated
    assert fresh.execute(
        "SELECT count(*) FROM public.rowembed_queue_1 WHERE id = 2"
    ).fetchone() == (1,)
    # One create_vectorizer remains, with the new options.
    assert fresh.execute(
        "SELECT count(*) FROM pg_proc WHERE proname = 'create_vectorizer'"
    ).fetchone() == (1,)
