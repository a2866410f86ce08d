"""Two owners in one database: neither can reach the other's tables through rowembed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.backfill import top_up_backfills
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer, get_vectorizer
from rowembed.workers.pipeline import run_batch
from rowembed.workers.runtime import Encoder

from ..conftest import MODEL

Conn = psycopg.Connection[Any]


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


CATALOG = ("vectorizer", "backfill", "batch_stats", "model_family", "query_connection")


def test_no_role_but_the_owner_writes_the_catalog(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """The catalog changes only through rowembed's functions: after every grant
    function (and an older release's grants, which migrate takes back), no role
    but the owner holds a write privilege on a catalog table."""
    alice, _ = owners
    suffix = own_db.info.dbname
    for role in (f"worker_{suffix}", f"searcher_{suffix}"):
        own_db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s)", [f"worker_{suffix}"])
    own_db.execute("SELECT rowembed.grant_searcher(%s)", [f"searcher_{suffix}"])
    older = sql.Identifier(alice.role)
    own_db.execute(
        sql.SQL("GRANT INSERT, UPDATE, DELETE ON rowembed.vectorizer TO {}").format(older)
    )
    migrate(own_db)
    writers = own_db.execute(
        "SELECT c.relname, a.grantee::regrole::text, a.privilege_type"
        "  FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.relnamespace = 'rowembed'::regnamespace AND c.relname = ANY (%s)"
        "   AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')"
        "   AND a.grantee <> c.relowner",
        [list(CATALOG)],
    ).fetchall()
    assert writers == []
    with connect(alice.url) as conn:
        for statement in (
            "UPDATE rowembed.vectorizer SET separator = 'x'",
            "DELETE FROM rowembed.backfill",
            "INSERT INTO rowembed.batch_stats (vectorizer_id, worker) VALUES (1, 'x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
            conn.rollback()
        # What she had done directly she still does through the functions.
        conn.execute(
            "SELECT rowembed.alter_vectorizer(%s, max_attempts => 3)", [alice.vectorizer.name]
        )


@pytest.mark.parametrize("stolen", ["source", "destination", "queue_table"])
def test_the_catalog_records_no_vectorizer_over_another_roles_tables(
    owners: tuple[Owner, Owner], stolen: str
) -> None:
    """The catalog's writer checks what it is given: a row naming another role's
    table would have migrate build SECURITY DEFINER functions over it."""
    alice, mallory = owners
    with connect(mallory.url) as conn:
        mine = conn.execute(
            "SELECT to_jsonb(z) || jsonb_build_object('source', source::oid,"
            " 'destination', destination::oid, 'queue_table', queue_table::oid)"
            " FROM rowembed.vectorizer z WHERE z.id = %s",
            [mallory.vectorizer.id],
        ).fetchone()
        theirs = own_oid(conn, alice.vectorizer, stolen)
        assert mine is not None
        forged = {**mine[0], stolen: theirs, "name": "forged"}
        forged["id"] = conn.execute("SELECT nextval('rowembed.vectorizer_id_seq')").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not a table of"):
            conn.execute("SELECT rowembed._catalog_insert(%s)", [Jsonb(forged)])
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="only the owner"):
            create_vectorizer(conn, alice.table, ["body"], model="m", dimensions=3, name="x")


def own_oid(conn: Conn, v: Vectorizer, column: str) -> int:
    name = relations(v)["queue" if column == "queue_table" else column]
    row = conn.execute("SELECT %s::regclass::oid", [name]).fetchone()
    assert row is not None
    return int(row[0])


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
    """Key types are types (regtype), read from the source by the catalog's
    writer: a creator can write none, so none runs as the dispatcher's role when
    it steps her backfill."""
    alice, _ = owners
    own_db.execute("CREATE TABLE pwned (by name)")
    own_db.execute("GRANT INSERT ON pwned TO PUBLIC")
    own_db.execute(
        "CREATE FUNCTION public.pwn() RETURNS boolean LANGUAGE sql"
        " AS $$ INSERT INTO public.pwned VALUES (current_user) RETURNING true $$"
    )
    injected = "int) OR public.pwn() OR (false"
    with connect(alice.url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE rowembed.vectorizer SET pk_types = pk_types WHERE name = %s",
                [alice.vectorizer.name],
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="not changed in place"):
            conn.execute(
                "SELECT rowembed._catalog_set(%s, jsonb_build_object('pk_types', ARRAY[%s]))",
                [alice.vectorizer.id, injected],
            )
        conn.rollback()
        conn.execute("SELECT rowembed.start_backfill(%s)", [alice.vectorizer.name])
    for _ in range(3):  # as the dispatcher does, past the first chunk (the cursor)
        own_db.execute("SELECT rowembed.backfill_step(%s, 1)", [alice.vectorizer.id])
    assert own_db.execute("SELECT count(*) FROM pwned").fetchone() == (0,)
    assert own_db.execute(
        "SELECT pk_types, pg_typeof(pk_types) FROM rowembed.vectorizer WHERE id = %s",
        [alice.vectorizer.id],
    ).fetchone() == (["integer"], "regtype[]")


def test_a_creator_cannot_point_replaces_at_another_roles_vectorizer(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """`replaces` would hand her vectorizer the other's name at the switch and
    drop the other's: only a vectorizer of her own source may be replaced."""
    alice, mallory = owners
    with connect(mallory.url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE rowembed.vectorizer SET replaces = %s WHERE name = %s",
                [alice.vectorizer.id, mallory.vectorizer.name],
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may replace only"):
            conn.execute(
                "SELECT rowembed._catalog_set(%s, jsonb_build_object('replaces', %s))",
                [mallory.vectorizer.id, alice.vectorizer.id],
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not one of"):
            conn.execute(
                "SELECT rowembed._catalog_switch(%s, %s)",
                [alice.vectorizer.id, mallory.vectorizer.id],
            )
    with connect(alice.url) as conn:
        conn.execute("SELECT rowembed.drop_vectorizer(%s)", [alice.vectorizer.name])


def test_a_creator_cannot_stop_or_block_another_roles_work(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """Another's backfill is not hers to cancel or step, another's vectorizer not
    hers to drop, and `name`.next (the name a model change takes) not hers to squat."""
    alice, mallory = owners
    theirs = alice.vectorizer
    own_db.execute("SELECT rowembed.start_backfill(%s)", [theirs.name])
    with connect(mallory.url) as conn:
        for statement, args in (
            ("SELECT rowembed._backfill_cancel(%s)", [theirs.id]),
            ("SELECT rowembed._catalog_delete(%s)", [theirs.id]),
            ("SELECT rowembed._backfill_record(%s, 0, 0, NULL, true)", [theirs.id]),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, args)
            conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="kept for model changes"):
            create_vectorizer(
                conn,
                mallory.table,
                ["body"],
                model="m",
                dimensions=3,
                name=f"{theirs.name}.next",
                destination="squat",
            )
    assert own_db.execute(
        "SELECT state FROM rowembed.backfill WHERE vectorizer_id = %s", [theirs.id]
    ).fetchone() == ("running",)
    with connect(alice.url) as conn:
        conn.execute("SELECT rowembed.alter_vectorizer(%s, dimensions => 4)", [theirs.name])
        assert conn.execute(
            "SELECT count(*) FROM rowembed.vectorizer WHERE name = %s", [f"{theirs.name}.next"]
        ).fetchone() == (1,)


def test_a_role_sees_only_the_vectorizers_it_may_use(
    own_db: Conn, postgres: EmbeddedPostgres, owners: tuple[Owner, Owner]
) -> None:
    alice, mallory = owners
    suffix = own_db.info.dbname
    worker, searcher, stranger = (f"{r}_{suffix}" for r in ("wk", "sr", "stranger"))
    for role in (worker, searcher, stranger):
        own_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [worker, alice.vectorizer.name])
    own_db.execute("SELECT rowembed.grant_searcher(%s, %s)", [searcher, mallory.vectorizer.name])
    own_db.execute(sql.SQL("GRANT USAGE ON SCHEMA rowembed TO {}").format(sql.Identifier(stranger)))
    own_db.execute(
        sql.SQL("GRANT SELECT ON rowembed.vectorizer, rowembed.backfill TO {}").format(
            sql.Identifier(stranger)
        )
    )
    seen = {
        role: visible(login(postgres, own_db, role))
        for role in (alice.role, mallory.role, worker, searcher, stranger)
    }
    assert seen == {
        alice.role: [alice.vectorizer.name],
        mallory.role: [mallory.vectorizer.name],
        worker: [alice.vectorizer.name],
        searcher: [mallory.vectorizer.name],
        stranger: [],
    }
    own_db.execute("SELECT rowembed.start_backfill(%s)", [alice.vectorizer.name])
    with connect(login(postgres, own_db, stranger)) as conn:
        assert conn.execute("SELECT count(*) FROM rowembed.backfill").fetchone() == (0,)
    with connect(login(postgres, own_db, searcher)) as conn:  # it searches: it works none
        assert conn.execute("SELECT name, problem FROM rowembed.status()").fetchall() == []


def visible(url: str) -> list[str]:
    with connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM rowembed.vectorizer ORDER BY id")]


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
        "_backfill_cancel",
        "_backfill_lock",
        "_backfill_record",
        "_backfill_start",
        "_catalog_delete",
        "_catalog_insert",
        "_catalog_set",
        "_catalog_switch",
        "_disarm_on_drop",
        "_prune_batch_stats",
        "_query_embedding",
        "_record_batch",
        "_refuse_entangling",
        "_rerank_scores",
        "_training_insert",
        "rowembed_vz_N_deleted",
        "rowembed_vz_N_inserted",
        "rowembed_vz_N_truncated",
        "rowembed_vz_N_updated",
    ]
    for name, config, event_trigger, public in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name
        assert event_trigger or not public, name


def test_query_traffic_is_each_vectorizers_own(
    own_db: Conn, postgres: EmbeddedPostgres, owners: tuple[Owner, Owner]
) -> None:
    """A worker role granted alice's vectorizer reaches alice's query texts,
    cached query vectors and rerank requests only: it cannot read mallory's
    pending texts or passages, plant her cached vectors or answer her reranks;
    alice's searcher cannot ask for a vectorizer it may not search."""
    alice, mallory = owners
    suffix = own_db.info.dbname
    worker, searcher = f"wk_{suffix}", f"sr_{suffix}"
    for role in (worker, searcher):
        own_db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [worker, alice.vectorizer.name])
    own_db.execute("SELECT rowembed.grant_searcher(%s, %s)", [searcher, alice.vectorizer.name])
    ids = {alice.vectorizer.id: "alice's", mallory.vectorizer.id: "mallory's"}
    for vid, text in ids.items():
        own_db.execute(
            "INSERT INTO rowembed.query_request (vectorizer_id, text_hash, text)"
            " VALUES (%s, rowembed._text_hash(%s), %s)",
            [vid, text, text],
        )
        own_db.execute(
            "INSERT INTO rowembed.query_cache (vectorizer_id, text_hash, embedding)"
            " VALUES (%s, rowembed._text_hash(%s), '{1,0,0}')",
            [vid, text + " cached"],
        )
        own_db.execute(
            "INSERT INTO rowembed.rerank_request (id, vectorizer_id, query, passages)"
            " VALUES (gen_random_uuid(), %s, 'q', ARRAY[%s])",
            [vid, text + " passage"],
        )
    with connect(login(postgres, own_db, worker)) as conn:
        assert [
            r[0] for r in conn.execute("SELECT vectorizer_id FROM rowembed.rerank_request")
        ] == [alice.vectorizer.id]
        assert conn.execute(
            "SELECT array_agg(vectorizer_id) FROM rowembed.query_cache"
        ).fetchone() == ([alice.vectorizer.id],)
        taken = conn.execute("SELECT vectorizer_id, text FROM rowembed.take_query_requests(10)")
        assert taken.fetchall() == [(alice.vectorizer.id, "alice's")]
        assert (
            conn.execute(
                "UPDATE rowembed.query_cache SET embedding = '{0,1,0}' WHERE vectorizer_id = %s",
                [mallory.vectorizer.id],
            ).rowcount
            == 0
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "SELECT rowembed.answer_query(%s, rowembed._text_hash('planted'), '{1,1,1}', NULL)",
                [mallory.vectorizer.id],
            )
        conn.rollback()
        theirs = own_db.execute(
            "SELECT id FROM rowembed.rerank_request WHERE vectorizer_id = %s",
            [mallory.vectorizer.id],
        ).fetchone()
        assert theirs is not None
        conn.execute("SELECT rowembed.answer_rerank(%s, '{9}', NULL)", [theirs[0]])
    assert own_db.execute(
        "SELECT scores FROM rowembed.rerank_request WHERE id = %s", [theirs[0]]
    ).fetchone() == (None,)
    with (
        connect(login(postgres, own_db, searcher)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not search"),
    ):
        conn.execute("SELECT rowembed._query_embedding(%s, 'x', 0.1)", [mallory.vectorizer.id])


def test_no_rowembed_function_resolves_a_name_in_a_schema_others_write(
    own_db: Conn, owners: tuple[Owner, Owner]
) -> None:
    """Every function sees pg_catalog only and names pgvector's objects
    schema-qualified: an overload a creator plants in the vector extension's
    schema (she may create there, as on PostgreSQL 14 and older everyone may in
    public) is never called by rowembed's functions, whoever runs them."""
    alice, _ = owners
    rows = own_db.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p"
        " WHERE p.pronamespace = 'rowembed'::regnamespace OR p.proname LIKE 'rowembed\\_vz\\_%'"
    ).fetchall()
    paths = {f: [c for c in config or [] if c.startswith("search_path=")] for f, config in rows}
    assert {f: p for f, p in paths.items() if p != ["search_path=pg_catalog, pg_temp"]} == {}
    own_db.execute("CREATE TABLE public.pwned (by name)")
    own_db.execute("GRANT INSERT ON public.pwned TO PUBLIC")
    with connect(alice.url) as conn:  # a closer match than pg_catalog.format(text, VARIADIC "any")
        conn.execute(
            "CREATE FUNCTION public.format(text, name) RETURNS text LANGUAGE sql"
            " AS $$ INSERT INTO public.pwned VALUES (current_user) RETURNING $1 $$"
        )
    v = alice.vectorizer
    own_db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"wk_{own_db.info.dbname}")))
    own_db.execute("SELECT rowembed.grant_worker(%s, %s)", [f"wk_{own_db.info.dbname}", v.name])
    own_db.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    own_db.execute("SELECT rowembed.backfill_step(%s, 10)", [v.id])
    own_db.execute("SELECT * FROM rowembed.status()")
    own_db.execute(
        sql.SQL("SELECT * FROM rowembed.search(NULL::{}, '[1,0,0]', 3)").format(
            sql.Identifier(alice.table)
        )
    )
    migrate(own_db)
    assert own_db.execute("SELECT count(*) FROM public.pwned").fetchone() == (0,)


def test_a_superusers_worker_runs_a_creators_code_as_the_creator(
    own_db: Conn, postgres: EmbeddedPostgres, encoder: Encoder
) -> None:
    """A creator owns her queue, change log and destination, and may attach code
    to them (here statement triggers) that runs with the rights of whoever
    writes them. The worker and dispatcher of the single-URL setup connect as a
    superuser: on her tables they act as her, so her code never runs as they."""
    alice = Owner(own_db, postgres, f"alice_{own_db.info.dbname}", model=MODEL)
    v = alice.vectorizer
    own_db.execute("CREATE TABLE public.ran_as (who name)")
    own_db.execute("GRANT INSERT ON public.ran_as TO PUBLIC")
    with connect(alice.url) as conn:
        conn.execute(
            "CREATE FUNCTION public.note_who() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN NULL; END $$"
        )
        for table in (v.queue, v.change_log, v.destination):
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER note_who AFTER INSERT OR UPDATE OR DELETE ON {}"
                    " FOR EACH STATEMENT EXECUTE FUNCTION public.note_who()"
                ).format(table)
            )
    worker_view = get_vectorizer(own_db, v.id)
    assert worker_view.run_as == alice.role
    own_db.execute(
        sql.SQL("INSERT INTO {} VALUES (3, 'three')").format(sql.Identifier(alice.table))
    )
    while run_batch(own_db, Queue(worker_view), encoder, limit=10, lease_seconds=60).claimed:
        pass
    with connect(alice.url) as conn:  # her own statement: her trigger runs as her
        conn.execute(sql.SQL("DELETE FROM {}").format(v.destination))
    own_db.execute("SELECT rowembed.start_backfill(%s)", [v.name])
    top_up_backfills(own_db, chunk=100)
    while run_batch(own_db, Queue(worker_view), encoder, limit=10, lease_seconds=60).claimed:
        pass
    ran_as = own_db.execute("SELECT who::text, count(*) FROM public.ran_as GROUP BY 1").fetchall()
    assert {who for who, _ in ran_as} == {alice.role}, ran_as
    assert own_db.execute(sql.SQL("SELECT count(*) FROM {}").format(v.destination)).fetchone() == (
        3,
    )
