"""Two owners in one database: neither can reach the other's tables through rowembed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL

Conn = psycopg.Connection[Any]
COPY_ROW = (
    "INSERT INTO rowembed.vectorizer (name, source, pk_columns, pk_types, text_columns,"
    " separator, model, dimensions, destination, embedding_column, queue_table,"
    " min_similarity, query_instruction, rerank_model, max_attempts)"
    " SELECT 'forged', {source}, pk_columns, pk_types, text_columns, separator, model,"
    " dimensions, {destination}, embedding_column, {queue}, min_similarity,"
    " query_instruction, rerank_model, max_attempts FROM rowembed.vectorizer WHERE name = %s"
)


class Owner:
    """A login role that owns a table `docs_<role>` and vectorizes it itself."""

    def __init__(
        self, admin: Conn, postgres: EmbeddedPostgres, role: str, model: str = "m"
    ) -> None:
        self.role = role
        self.table = f"docs_{role}"
        r, t = sql.Identifier(role), sql.Identifier(self.table)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(r))
        admin.execute("SELECT rowembed.grant_creator(%s)", [role])
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(r))
        admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
        admin.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(t))
        admin.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(t, r))
        self.url = login(postgres, admin, role)
        with connect(self.url) as conn:
            self.vectorizer = create_vectorizer(
                conn, self.table, ["body"], model=model, dimensions=None if model != "m" else 3
            )


def login(postgres: EmbeddedPostgres, admin: Conn, role: str) -> str:
    """The URL of `role` on the database `admin` is connected to."""
    return postgres.url.replace("postgres@", f"{role}@").replace(
        "/postgres?", f"/{admin.info.dbname}?"
    )


@pytest.fixture
def owners(own_db: Conn, postgres: EmbeddedPostgres) -> Iterator[tuple[Owner, Owner]]:
    suffix = own_db.info.dbname
    yield Owner(own_db, postgres, f"alice_{suffix}"), Owner(own_db, postgres, f"mallory_{suffix}")


def relations(v: Vectorizer) -> dict[str, str]:
    return {
        "source": sql.Identifier(v.source_schema, v.source_table).as_string(None),
        "destination": sql.Identifier(v.destination_schema, v.destination_table).as_string(None),
        "queue": sql.Identifier(v.queue_schema, v.queue_table).as_string(None),
    }


@pytest.mark.parametrize("stolen", ["source", "destination", "queue"])
def test_a_role_cannot_write_a_catalog_row_over_another_roles_tables(
    owners: tuple[Owner, Owner], stolen: str
) -> None:
    """With INSERT on the catalog alone, a row naming another role's table would
    have `migrate` build SECURITY DEFINER functions over it."""
    alice, mallory = owners
    theirs, mine = relations(alice.vectorizer), relations(mallory.vectorizer)
    forged = {k: sql.Literal(theirs[k] if k == stolen else v) for k, v in mine.items()}
    forged = {k: sql.SQL("{}::regclass").format(v) for k, v in forged.items()}
    with connect(mallory.url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(sql.SQL(COPY_ROW).format(**forged), [mallory.vectorizer.name])
        column = "queue_table" if stolen == "queue" else stolen
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                sql.SQL("UPDATE rowembed.vectorizer SET {} = %s::regclass WHERE name = %s").format(
                    sql.Identifier(column)
                ),
                [theirs[stolen], mallory.vectorizer.name],
            )
        changed = conn.execute(
            "UPDATE rowembed.vectorizer SET separator = 'x' WHERE name = %s",
            [alice.vectorizer.name],
        )
        assert changed.rowcount == 0
        with pytest.raises(psycopg.errors.RaiseException, match="only the owner"):
            create_vectorizer(conn, alice.table, ["body"], model="m", dimensions=3, name="x")


def test_generated_functions_run_as_their_creator_whoever_migrates(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    alice, _ = owners
    function = f"{alice.vectorizer.queue_schema}.rowembed_vz_{alice.vectorizer.id}_truncated()"
    own_db.execute(sql.SQL("DROP FUNCTION {} CASCADE").format(sql.SQL(function)))
    migrate(own_db)  # as the superuser: recreates the function and its trigger
    owner = own_db.execute(
        "SELECT p.proowner::regrole::text FROM pg_proc p WHERE p.oid = %s::regprocedure",
        [function],
    ).fetchone()
    assert owner == (alice.role,)
    assert own_db.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = %s",
        [f"rowembed_{alice.vectorizer.id}_truncate"],
    ).fetchone() == (1,)


def test_a_searcher_needs_its_source_and_grant_searcher_only(
    own_db: Conn, postgres: EmbeddedPostgres
) -> None:
    """In a schema whose name needs quoting, as the README's Privileges say: the
    searcher gets SELECT on the source from its owner, and grant_searcher."""
    schema = f"Team Docs {own_db.info.dbname}"
    own_db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    table = sql.Identifier(schema, "notes")
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(table))
    own_db.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(table))
    v = create_vectorizer(own_db, table.as_string(own_db), ["body"], model="m", dimensions=3)
    own_db.execute(
        sql.SQL("INSERT INTO {} (id, embedding, text_hash) VALUES (1, '[1,0,0]', 'x')").format(
            v.destination
        )
    )
    searcher = f"searcher_{own_db.info.dbname}"
    own_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(searcher)))
    own_db.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(searcher)
        )
    )
    own_db.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(searcher)))
    search = sql.SQL(
        "SELECT (item).id, rowembed.embedded_text(item) FROM rowembed.search(NULL::{},"
        " '[1,0,0]', 5, -1)"
    ).format(table)
    url = postgres.url.replace("postgres@", f"{searcher}@").replace(
        "/postgres?", f"/{own_db.info.dbname}?"
    )
    with connect(url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(search)
        own_db.execute("SELECT rowembed.grant_searcher(%s, %s)", [searcher, v.name])
        assert conn.execute(search).fetchall() == [(1, "one")]
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [searcher, v.name])  # same schemas


def test_the_readme_roles_together(
    own_db: Conn, postgres: EmbeddedPostgres, encoder: Encoder
) -> None:
    """The README's Privileges, set up exactly as it says, with two vectorizers
    of two owners: an application role writes alice's table, a worker role
    granted alice's vectorizer embeds it (and the dispatcher's calls work for
    it), a searcher finds the rows; none of them reaches mallory's."""
    suffix = own_db.info.dbname
    alice = Owner(own_db, postgres, f"alice_{suffix}", model=MODEL)
    mallory = Owner(own_db, postgres, f"mallory_{suffix}", model=MODEL)
    app, worker, searcher = (f"{r}_{suffix}" for r in ("app", "worker", "searcher"))
    for role in (app, worker, searcher):
        own_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [worker, alice.vectorizer.name])
    own_db.execute("SELECT rowembed.grant_searcher(%s, %s)", [searcher, alice.vectorizer.name])
    alices_table = sql.Identifier(alice.table)
    with connect(alice.url) as conn:  # grants on the source come from its owner
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                alices_table, sql.Identifier(app)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(alices_table, sql.Identifier(searcher))
        )
    with connect(login(postgres, own_db, app)) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'key rotation')").format(alices_table))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(alices_table))
    with connect(login(postgres, own_db, worker)) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM rowembed.vectorizers_with_work()")] == [
            alice.vectorizer.id
        ]
        assert [r[0] for r in conn.execute("SELECT name FROM rowembed.status()")] == [
            alice.vectorizer.name
        ]
        conn.execute("SELECT * FROM rowembed.errors()")
        queue = Queue(alice.vectorizer)
        while run_batch(conn, queue, encoder, limit=10, lease_seconds=60).claimed:
            pass
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_batch(conn, Queue(mallory.vectorizer), encoder, limit=10, lease_seconds=60)
    with connect(login(postgres, own_db, searcher)) as conn:
        found = conn.execute(
            sql.SQL("SELECT (item).id FROM rowembed.search(NULL::{}, %s::vector, 5, -1)").format(
                alices_table
            ),
            [encoder.encode(["key rotation"]).vectors[0].tolist()],
        ).fetchall()
        assert sorted(found) == [(2,), (3,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(mallory.vectorizer.destination))


def test_no_role_but_the_owner_creates_in_schema_rowembed(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """A role that could create there could add an overload that rowembed's own
    functions (some SECURITY DEFINER, some run by a superuser's worker) call."""
    alice, _ = owners
    suffix = own_db.info.dbname
    for role in (f"worker_{suffix}", f"searcher_{suffix}"):
        own_db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s)", [f"worker_{suffix}"])
    own_db.execute("SELECT rowembed.grant_searcher(%s)", [f"searcher_{suffix}"])
    own_db.execute("GRANT CREATE ON SCHEMA rowembed TO PUBLIC")  # as an older release did
    migrate(own_db)
    creators = own_db.execute(
        "SELECT a.grantee::regrole::text FROM pg_namespace n, aclexplode(n.nspacl) a"
        " WHERE n.nspname = 'rowembed' AND a.privilege_type = 'CREATE'"
        " AND a.grantee <> n.nspowner"
    ).fetchall()
    assert creators == []
    with connect(alice.url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "CREATE FUNCTION rowembed._conninfo_value(value name) RETURNS text"
            " LANGUAGE sql AS $$ SELECT 'hijacked' $$"
        )
    # Her vectorizer's own objects live in its home schema, owned by her.
    owned = own_db.execute(
        "SELECT c.relnamespace::regnamespace::text, c.relowner::regrole::text FROM pg_class c"
        " WHERE c.oid = %s::regclass",
        [f"public.rowembed_queue_{alice.vectorizer.id}"],
    ).fetchone()
    assert owned == ("public", alice.role)


def test_catalog_text_never_reaches_dynamic_sql(own_db: Conn, owners: tuple[Owner, Owner]) -> None:
    """A creator may write her own catalog row: key types written there must not
    run as the dispatcher's role when it steps her backfill."""
    alice, _ = owners
    own_db.execute("CREATE TABLE pwned (by name)")
    own_db.execute("GRANT INSERT ON pwned TO PUBLIC")
    own_db.execute(
        "CREATE FUNCTION public.pwn() RETURNS boolean LANGUAGE sql"
        " AS $$ INSERT INTO public.pwned VALUES (current_user) RETURNING true $$"
    )
    with connect(alice.url) as conn:
        conn.execute(
            "UPDATE rowembed.vectorizer SET pk_types = ARRAY['int) OR public.pwn() OR (false']"
            " WHERE name = %s",
            [alice.vectorizer.name],
        )
        conn.execute("SELECT rowembed.start_backfill(%s)", [alice.vectorizer.name])
    for _ in range(3):  # as the dispatcher does, past the first chunk (the cursor)
        own_db.execute("SELECT rowembed.backfill_step(%s, 1)", [alice.vectorizer.id])
    assert own_db.execute("SELECT count(*) FROM pwned").fetchone() == (0,)


def test_a_forged_replaces_takes_nothing_over(own_db: Conn, owners: tuple[Owner, Owner]) -> None:
    """A creator who points `replaces` of her row at another's vectorizer gets
    neither its name nor its drop; its owner can still drop it."""
    alice, mallory = owners
    with connect(mallory.url) as conn:
        conn.execute(
            "UPDATE rowembed.vectorizer SET replaces = %s WHERE name = %s",
            [alice.vectorizer.id, mallory.vectorizer.name],
        )
    # Hers looks complete: nothing queued, her backfill done.
    own_db.execute(sql.SQL("DELETE FROM {}").format(mallory.vectorizer.queue))
    own_db.execute(sql.SQL("DELETE FROM {}").format(mallory.vectorizer.change_log))
    own_db.execute(
        "UPDATE rowembed.backfill SET state = 'done' WHERE vectorizer_id = %s",
        [mallory.vectorizer.id],
    )
    assert own_db.execute("SELECT * FROM rowembed.complete_alters()").fetchall() == []
    names = dict(own_db.execute("SELECT id, name FROM rowembed.vectorizer").fetchall())
    assert names[alice.vectorizer.id] == alice.vectorizer.name
    with connect(alice.url) as conn:
        conn.execute("SELECT rowembed.drop_vectorizer(%s)", [alice.vectorizer.name])
    assert own_db.execute(
        "SELECT count(*) FROM rowembed.vectorizer WHERE id = %s", [mallory.vectorizer.id]
    ).fetchone() == (1,)


def test_security_definer_functions_are_few_pinned_and_not_public(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """Every SECURITY DEFINER function rowembed makes: the expected ones only,
    search_path pinned to pg_catalog and pg_temp, and not executable by PUBLIC
    (event trigger functions cannot be called at all)."""
    alice, _ = owners
    own_db.execute("SELECT rowembed.enable_text_search(%s)", [alice.vectorizer.name])
    rows = own_db.execute(
        "SELECT regexp_replace(p.proname, '_[0-9]+_', '_N_'), p.proconfig,"
        "       p.prorettype = 'event_trigger'::regtype,"
        "       EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        "                WHERE a.grantee = 0)"
        "  FROM pg_proc p"
        " WHERE p.prosecdef AND (p.pronamespace = 'rowembed'::regnamespace"
        "                        OR p.proname LIKE 'rowembed\\_vz\\_%')"
    ).fetchall()
    assert sorted({name for name, *_ in rows}) == [
        "_disarm_on_drop",
        "_query_embedding",
        "_refuse_entangling",
        "_rerank_scores",
        "rowembed_vz_N_deleted",
        "rowembed_vz_N_inserted",
        "rowembed_vz_N_truncated",
        "rowembed_vz_N_updated",
    ]
    for name, config, event_trigger, public in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name
        assert event_trigger or not public, name
