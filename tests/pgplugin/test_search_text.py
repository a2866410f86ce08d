"""Searching by text from plain SQL: the query embedded by a real worker through
the loopback session and the query queue, the cache, the timeout, privileges."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from rowembed import search
from rowembed.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from rowembed.pgplugin import connect, create_vectorizer
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.workers.query_answers import answer_queries
from rowembed.workers.runtime import Encoder, Reranker

from ..conftest import MODEL, WorkerProcess, database_with_worker, new_database, wait_until
from ..rowembed.test_cli import rowembed

Conn = psycopg.Connection[Any]
TEXTS = {
    1: "the cat sat on the mat and purred",
    2: "stock markets fell sharply on Monday",
    3: "rotating encryption keys every ninety days",
}


@pytest.fixture(scope="module")
def text_stack(
    postgres: EmbeddedPostgres, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WorkerProcess]]:
    log = tmp_path_factory.mktemp("text-worker") / "worker.log"
    with database_with_worker(postgres, redis_url, log) as stack:
        yield stack


@pytest.fixture(scope="module")
def text_db(text_stack: tuple[str, WorkerProcess]) -> str:
    return text_stack[0]


@pytest.fixture(scope="module")
def text_worker(text_stack: tuple[str, WorkerProcess]) -> WorkerProcess:
    return text_stack[1]


@pytest.fixture
def db(text_db: str, text_worker: WorkerProcess) -> Iterator[Conn]:
    with connect(text_db) as c:
        yield c


def embedded_table(conn: Conn, table: str) -> Vectorizer:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    for key, body in TEXTS.items():
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), [key, body])
    v = create_vectorizer(conn, table, ["body"], model=MODEL)
    wait_until(lambda: Queue(v).is_drained(conn), timeout=60)
    return v


def search_text(conn: Conn, table: str, query: str, **options: Any) -> list[tuple[int, float]]:
    named = sql.SQL("").join(
        sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items()
    )
    statement = sql.SQL(
        "SELECT (item).id, similarity FROM rowembed.search_text(NULL::{}, {}, 3, -1{})"
    ).format(sql.Identifier(table), sql.Literal(query), named)
    return [(key, similarity) for key, similarity in conn.execute(statement)]


def test_text_search_from_a_plain_connection_inside_open_transactions(
    db: Conn, table: str, text_db: str, encoder: Encoder
) -> None:
    """No rowembed Python on the caller's side, in a transaction it keeps open,
    read committed and repeatable read (whose snapshot cannot see the answer)."""
    v = embedded_table(db, table)
    for isolation, query in (("READ COMMITTED", "key rotation"), ("REPEATABLE READ", "new keys")):
        expected = encoder.encode([v.query_instruction + query, TEXTS[3]]).vectors
        with psycopg.connect(text_db) as plain:  # not autocommit: a transaction opens
            plain.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            hits = search_text(plain, table, query)
            assert plain.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert hits[0][0] == 3
            assert hits[0][1] == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)
            plain.rollback()


def test_a_cached_query_never_reaches_a_worker(db: Conn, table: str) -> None:
    v = embedded_table(db, table)
    assert search_text(db, table, "felines")[0][0] == 1
    # Were it asked again, a worker would answer "felines" with the cat's row;
    # the cache, made to hold the markets' vector, answers.
    db.execute(
        "UPDATE rowembed.query_cache AS c SET embedding = e.embedding::real[]"
        f" FROM {v.destination.as_string(db)} AS e WHERE e.id = 2"
        " AND c.vectorizer_id = %s AND c.text_hash = rowembed._text_hash(%s)",
        [v.id, v.query_instruction + "felines"],
    )
    started = time.perf_counter()
    assert search_text(db, table, "felines")[0] == (2, pytest.approx(1.0, abs=1e-5))
    assert time.perf_counter() - started < 1.0  # no poll: a worker answers in tens of ms


def test_without_a_worker_a_text_search_times_out_saying_so_and_leaves_nothing(
    own_db: Conn, table: str
) -> None:
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    create_vectorizer(own_db, table, ["body"], model=MODEL)
    started = time.monotonic()
    with pytest.raises(psycopg.errors.RaiseException, match="no worker answered on the query"):
        search_text(own_db, table, "anything", timeout_seconds=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert own_db.execute("SELECT count(*) FROM rowembed.query_request").fetchone() == (0,)
    assert own_db.execute("SELECT dblink_get_connections()").fetchone() == (None,)


def test_a_model_the_worker_cannot_load_is_an_error_not_a_wait(db: Conn, table: str) -> None:
    db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    v = create_vectorizer(db, table, ["body"], model="/nonexistent/model", dimensions=3)
    with pytest.raises(psycopg.errors.RaiseException, match="could not embed the query: "):
        search_text(db, table, "anything", timeout_seconds=30)
    assert db.execute(
        "SELECT count(*) FROM rowembed.query_cache WHERE vectorizer_id = %s", [v.id]
    ).fetchone() == (0,)  # fmt: skip


def test_a_searcher_needs_only_grant_searcher_and_keeps_no_loopback_session(
    db: Conn, table: str, text_db: str
) -> None:
    """The loopback session is opened as the functions' owner: it must be closed
    before control returns, or the caller could run anything on it."""
    v = embedded_table(db, table)
    role = f"text_searcher_{table}"[:60]
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
    )
    url = text_db.replace("postgres@", f"{role}@")
    with psycopg.connect(url, autocommit=True) as searcher:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            search_text(searcher, table, "purring")
        # It runs as its owner: a role that may use the schema (as workers and
        # creators may) still cannot call it.
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA rowembed TO {}").format(sql.Identifier(role)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="_query_embedding"):
            searcher.execute("SELECT rowembed._query_embedding(%s, 'x')", [v.id])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="_rerank_scores"):
            searcher.execute("SELECT rowembed._rerank_scores(%s, 'x', ARRAY['y'])", [v.id])
        db.execute("SELECT rowembed.grant_searcher(%s, %s)", [role, v.name])
        assert search_text(searcher, table, "purring")[0][0] == 1
        assert searcher.execute("SELECT dblink_get_connections()").fetchone() == (None,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            searcher.execute("SELECT * FROM rowembed.query_cache")


def test_an_empty_query_text_is_a_clear_error(conn: Conn, table: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    create_vectorizer(conn, table, ["body"], model=MODEL)
    with pytest.raises(psycopg.errors.RaiseException, match="the query text is empty"):
        search_text(conn, table, "  ")


def test_a_request_whose_notify_was_lost_is_answered_by_the_sweep(db: Conn, table: str) -> None:
    v = embedded_table(db, table)
    text = f"asked without a NOTIFY {time.time()}"
    db.execute(
        "INSERT INTO rowembed.query_request (vectorizer_id, text_hash, text)"
        " VALUES (%s, rowembed._text_hash(%s), %s)",
        [v.id, text, text],
    )
    wait_until(
        lambda: db.execute(
            "SELECT embedding IS NOT NULL FROM rowembed.query_cache"
            " WHERE vectorizer_id = %s AND text_hash = rowembed._text_hash(%s)",
            [v.id, text],
        ).fetchone(),
        timeout=30,
    )
    assert db.execute("SELECT count(*) FROM rowembed.query_request").fetchone() == (0,)


def test_rerank_from_sql_scores_as_the_cross_encoder_does(
    db: Conn, table: str, cross_encoder_dir: Path
) -> None:
    t = sql.Identifier(table)
    db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    for key, body in TEXTS.items():
        db.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(t), [key, body])
    v = create_vectorizer(db, table, ["body"], model=MODEL, rerank_model=str(cross_encoder_dir))
    wait_until(lambda: Queue(v).is_drained(db), timeout=60)
    passages = list(TEXTS.values())
    expected = Reranker.load(str(cross_encoder_dir), device="cpu").score("keys", passages).scores
    (scores,) = db.execute(
        "SELECT rowembed.rerank(%s, 'keys', %s)", [v.name, passages]
    ).fetchone()  # fmt: skip
    assert np.abs(np.array(scores) - expected).max() < 1e-4
    ranked = db.execute(
        sql.SQL(
            "SELECT (item).id, rerank_score FROM rowembed.search_text(NULL::{}, 'keys', 2, -1,"
            " rerank => true, candidates => 3)"
        ).format(t)
    ).fetchall()
    best = np.argsort(-expected)[:2]
    assert [key for key, _ in ranked] == [list(TEXTS)[i] for i in best]
    assert [score for _, score in ranked] == pytest.approx(expected[best].tolist(), abs=1e-4)
    assert db.execute("SELECT count(*) FROM rowembed.rerank_request").fetchone() == (0,)


def test_without_a_rerank_worker_rerank_times_out_saying_so(own_db: Conn, table: str) -> None:
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    v = create_vectorizer(own_db, table, ["body"], model=MODEL)
    with pytest.raises(psycopg.errors.RaiseException, match="no worker answered on the rerank"):
        own_db.execute(
            "SELECT rowembed.rerank(%s, 'q', ARRAY['a', 'b'], timeout_seconds => 0.3)", [v.name]
        )
    assert own_db.execute("SELECT count(*) FROM rowembed.rerank_request").fetchone() == (0,)


def test_a_loopback_that_cannot_connect_says_how_to_fix_it(own_db: Conn, table: str) -> None:
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    v = create_vectorizer(own_db, table, ["body"], model=MODEL)
    own_db.execute("SELECT rowembed.set_query_connection('host=/nonexistent port=1')")
    with pytest.raises(psycopg.errors.RaiseException, match="could not connect") as raised:
        own_db.execute("SELECT rowembed.embed_query(%s, 'q', 0.3)", [v.name])
    assert "set_query_connection" in (raised.value.diag.message_hint or "")
    own_db.execute("SELECT rowembed.set_query_connection(NULL)")
    assert own_db.execute("SELECT count(*) FROM rowembed.query_connection").fetchone() == (0,)


def test_a_non_superuser_owner_is_told_what_search_text_needs_and_it_then_works(
    postgres: EmbeddedPostgres, encoder: Encoder
) -> None:
    """As "Use it with your own PostgreSQL" says: migrate by a role that is not a
    superuser says once, with the fix, that dblink is missing, then that the
    loopback needs a password; a search says the same; a connection string the
    server asks no password on is refused in one line; with the password asked
    for, search_text works."""
    with new_database(postgres) as admin:
        db = admin.info.dbname
        owner = f"owner_{db}"
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(owner)))
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(db), sql.Identifier(owner)
        ))  # fmt: skip
        admin.execute("CREATE EXTENSION vector")
        url = postgres.url.replace("postgres@", f"{owner}:pw@").replace("/postgres?", f"/{db}?")

        migrated = rowembed("migrate", database_url=url)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stderr.strip() == (
            "rowembed: warning: search_text, hybrid_search, embed_query and rerank ask the"
            " workers over dblink, which is not installed in this database. As a superuser:"
            " CREATE EXTENSION dblink;"
        )
        admin.execute("CREATE EXTENSION dblink")
        migrated = rowembed("migrate", database_url=url)
        (line,) = migrated.stderr.splitlines()
        assert f"owned by {owner}, not a superuser" in line and "set_query_connection" in line

        hba = postgres.data_dir / "pg_hba.conf"
        trusted = hba.read_text()
        with connect(url) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            v = create_vectorizer(conn, "notes", ["body"], model=MODEL)
            query = "SELECT rowembed.embed_query(%s, 'a cat', 2)"
            before_trying = f"owned by {owner}, not a superuser"  # said before dblink is tried
            with pytest.raises(psycopg.errors.RaiseException, match=before_trying) as raised:
                conn.execute(query, [v.name])
            assert "set_query_connection" in (raised.value.diag.message_hint or "")
            socket_dir = postgres.base_dir
            conninfo = f"host={socket_dir} dbname={db} user={owner}"
            conn.execute("SELECT rowembed.set_query_connection(%s)", [conninfo])
            with pytest.raises(psycopg.errors.RaiseException, match="without a password"):
                conn.execute(query, [v.name])
            try:
                hba.write_text(f"local {db} {owner} scram-sha-256\n{trusted}")
                admin.execute("SELECT pg_reload_conf()")
                conn.execute(
                    "SELECT rowembed.set_query_connection(%s)", [conninfo + " password=pw"]
                )
                stop = threading.Event()

                def answer() -> None:
                    with connect(postgres.url.replace("/postgres?", f"/{db}?")) as worker:
                        while not stop.is_set():
                            answer_queries(worker, lambda model: encoder, cache_rows=100)
                            time.sleep(0.02)

                answering = threading.Thread(target=answer)
                answering.start()
                try:
                    (vector,) = conn.execute(query, [v.name]).fetchone() or (None,)
                finally:
                    stop.set()
                    answering.join()
                expected = encoder.encode([v.query_instruction + "a cat"]).vectors[0]
                assert vector is not None and np.allclose(vector.to_numpy(), expected, atol=1e-4)
            finally:
                hba.write_text(trusted)
                admin.execute("SELECT pg_reload_conf()")


HYBRID = {
    1: ("the cat sat on the mat and purred", "en"),
    2: ("payment failed: error E4312, retry once E4312 clears", "en"),
    3: ("stock markets fell sharply on Monday", "en"),
    4: ("kittens playing with a ball of yarn", "en"),
    5: ("die Katze schläft, Fehler E4312", "de"),
}


def hybrid_table(db: Conn, table: str) -> Vectorizer:
    t = sql.Identifier(table)
    db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, lang text)").format(t))
    for key, (body, lang) in HYBRID.items():
        db.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(t), [key, body, lang])
    v = create_vectorizer(db, table, ["body"], model=MODEL)
    wait_until(lambda: Queue(v).is_drained(db), timeout=60)
    db.execute("SELECT rowembed.enable_text_search(%s, 'english')", [v.name])
    return v


def test_hybrid_search_fuses_vector_and_full_text_ranks(db: Conn, table: str) -> None:
    """The order is reciprocal rank fusion of the two legs, each computed on its
    own here (the vector leg at the vectorizer's threshold, as hybrid_search)."""
    v = hybrid_table(db, table)
    query, en = "error E4312", {"lang": "en"}
    vector_leg = [
        key
        for (key,) in db.execute(
            sql.SQL(
                "SELECT (item).id FROM rowembed.search_text(NULL::{}, %s, 10, filter => %s)"
            ).format(sql.Identifier(table)),
            [query, json.dumps(en)],
        )
    ]
    text_leg = [
        key
        for (key,) in db.execute(
            sql.SQL(
                "SELECT id FROM {} AS t WHERE {}(t.body) @@ 'error & e4312'::tsquery"
                " AND lang = 'en' ORDER BY ts_rank_cd({}(t.body), 'error & e4312'::tsquery) DESC"
            ).format(
                sql.Identifier(table),
                sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_document"),
                sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_document"),
            )
        )
    ]
    assert text_leg == [2]  # all the words, in English rows (row 5 is German)

    def fused(key: int) -> float:
        return sum(1 / (60 + leg.index(key) + 1) for leg in (vector_leg, text_leg) if key in leg)

    expected = sorted(dict.fromkeys(vector_leg + text_leg), key=lambda key: -fused(key))[:3]
    hybrid = db.execute(
        sql.SQL(
            "SELECT (item).id, score, (item).lang FROM rowembed.hybrid_search(NULL::{}, %s, 3,"
            " filter => %s)"
        ).format(sql.Identifier(table)),
        [query, json.dumps(en)],
    ).fetchall()
    assert [key for key, _, _ in hybrid] == expected
    assert [score for _, score, _ in hybrid] == pytest.approx([fused(k) for k in expected])
    assert {lang for _, _, lang in hybrid} == {"en"}  # the filter holds on both legs


def test_the_full_text_leg_is_index_backed_and_goes_with_the_vectorizer(
    db: Conn, table: str
) -> None:
    v = hybrid_table(db, table)
    document = sql.Identifier(v.queue_schema, f"rowembed_vz_{v.id}_document")
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in db.execute(
                sql.SQL("EXPLAIN SELECT id FROM {} AS t WHERE {}(t.body) @@ 'cat'::tsquery").format(
                    sql.Identifier(table), document
                )
            )
        )
    assert f"Bitmap Index Scan on _vz_{v.id}_document" in plan, plan
    db.execute("SELECT rowembed.drop_vectorizer(%s)", [v.name])
    assert db.execute(
        "SELECT count(*) FROM pg_class WHERE relname = %s", [f"_vz_{v.id}_document"]
    ).fetchone() == (0,)  # fmt: skip


def test_hybrid_search_needs_a_text_index_and_text_columns(db: Conn, table: str) -> None:
    t = sql.Identifier(table)
    db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, n int)").format(t))
    v = create_vectorizer(db, table, ["body", "n"], model=MODEL)
    with pytest.raises(psycopg.errors.RaiseException, match="has no full text index") as raised:
        db.execute(sql.SQL("SELECT * FROM rowembed.hybrid_search(NULL::{}, 'x')").format(t))
    assert "enable_text_search" in (raised.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.RaiseException, match=r"needs text columns; n \(integer\)"):
        db.execute("SELECT rowembed.enable_text_search(%s)", [v.name])


def test_the_cli_and_python_search_take_the_sql_path(
    db: Conn, table: str, text_db: str, redis_url: str
) -> None:
    """With a broker configured, `rowembed search` and rowembed.search() without
    models ask search_text(): the same query vector, from the same cache."""
    v = embedded_table(db, table)
    result = rowembed(
        "--redis-url", redis_url, "search", table, "purring cat", "--json",
        "--min-similarity", "-1", database_url=text_db,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert shown[0]["row"]["id"] == 1
    hits = search(db, v, "purring cat", min_similarity=-1)
    assert [(h.row["id"], h.similarity) for h in hits] == [
        (s["row"]["id"], pytest.approx(s["similarity"])) for s in shown
    ]
    cached = db.execute(
        "SELECT count(*) FROM rowembed.query_cache WHERE text_hash = rowembed._text_hash(%s)",
        [v.query_instruction + "purring cat"],
    ).fetchone()
    assert cached == (1,)


def test_a_searcher_names_a_vectorizer_never_a_model(db: Conn) -> None:
    """The functions that ask the workers take a vectorizer: no caller can make
    a worker load a model string (a path, a hub id) of its choosing."""
    for call in (
        "SELECT rowembed._query_embedding('/etc/some/private/dir', 'x', 30)",
        "SELECT rowembed._rerank_scores('another/hub-model', 'x', ARRAY['y'], 30)",
    ):
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            db.execute(call)


def test_loopback_sessions_run_as_a_capped_role_with_the_protocols_rights_only(
    own_db: Conn, table: str
) -> None:
    """Not a superuser (no slot kept for superusers is ever taken), a connection
    limit, the request tables' rights and no others, and a bounded wait."""
    assert own_db.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolconnlimit"
        " FROM pg_roles WHERE rolname = 'rowembed_loopback'"
    ).fetchone() == (False, False, False, False, 32)
    rights = own_db.execute(
        "SELECT c.relname::text, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE a.grantee = 'rowembed_loopback'::regrole ORDER BY 1, 2"
    ).fetchall()
    assert rights == [
        ("query_cache", "DELETE"),
        ("query_cache", "SELECT"),
        *[("query_request", p) for p in ("DELETE", "INSERT", "SELECT")],
        *[("rerank_request", p) for p in ("DELETE", "INSERT", "SELECT")],
    ]
    t = sql.Identifier(table)
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    create_vectorizer(own_db, table, ["body"], model=MODEL)
    with pytest.raises(psycopg.errors.RaiseException, match="waits at most 60 s"):
        search_text(own_db, table, "anything", timeout_seconds=61)
    seen: list[Any] = []
    with connect(own_db.info.dsn) as watcher:

        def watch() -> None:
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                seen.extend(
                    watcher.execute(
                        "SELECT usename, (SELECT rolsuper FROM pg_roles WHERE rolname = usename)"
                        " FROM pg_stat_activity WHERE application_name = 'rowembed-query'"
                        " AND datname = current_database()"
                    ).fetchall()
                )
                time.sleep(0.02)

        thread = threading.Thread(target=watch)
        thread.start()
        with pytest.raises(psycopg.errors.RaiseException, match="no worker answered"):
            search_text(own_db, table, "anything", timeout_seconds=1)
        thread.join()
    assert seen[:1] == [("rowembed_loopback", False)]


def test_a_rerank_holds_a_bounded_number_of_passages(own_db: Conn, table: str) -> None:
    """Refused at the SQL boundary with one line, before any worker is asked."""
    t = sql.Identifier(table)
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    v = create_vectorizer(own_db, table, ["body"], model=MODEL)
    with pytest.raises(psycopg.errors.RaiseException, match="at most 1000 passages, not 1001"):
        own_db.execute(
            "SELECT rowembed.rerank(%s, 'q', array_fill('p'::text, ARRAY[1001]))", [v.name]
        )
    assert own_db.execute("SELECT count(*) FROM rowembed.rerank_request").fetchone() == (0,)


def session(conn: Conn, application_name: str) -> psycopg.Connection[Any]:
    """A session that shows as `application_name`, as a dispatcher or worker does."""
    return psycopg.connect(conn.info.dsn, application_name=application_name, autocommit=True)


def test_a_timeout_says_which_of_three_things_is_wrong(own_db: Conn, table: str) -> None:
    """No dispatcher (no worker hears of it), a dispatcher that cannot reach its
    broker, no query worker, or busy ones: each a line of its own."""
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip

    def why() -> str:
        with pytest.raises(psycopg.errors.RaiseException) as timed_out:
            search_text(own_db, table, "anything", timeout_seconds=0.2)
        return str(timed_out.value).splitlines()[0]

    create_vectorizer(own_db, table, ["body"], model=MODEL)
    assert "no dispatcher is connected to this database" in why()
    with session(own_db, "rowembed-dispatcher: broker 127.0.0.1:1 unreachable"):
        assert "cannot reach its broker (broker 127.0.0.1:1 unreachable)" in why()
    with session(own_db, "rowembed-dispatcher"):
        assert "no worker serving the query queue is connected" in why()
        with session(own_db, "rowembed-query-worker"):
            assert "1 worker(s) serve the query queue and are busy" in why()


def test_a_dispatcher_that_loses_its_broker_says_so_to_callers(
    own_db: Conn, table: str, tmp_path: Path
) -> None:
    """A real dispatcher whose Redis (password-protected, on TCP) goes away keeps
    listening, says so once in its log, and the caller's timeout names the
    broker without credentials."""
    import socket
    import subprocess
    import sys

    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(table)
    ))  # fmt: skip
    create_vectorizer(own_db, table, ["body"], model=MODEL)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = subprocess.Popen(
        [str(EmbeddedRedis().binary), "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", "s3cret", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    log = tmp_path / "dispatcher.log"
    env = {
        **os.environ,
        "ROWEMBED_DATABASE_URL": own_db.info.dsn,
        "ROWEMBED_REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0",
    }
    dispatcher = None
    try:
        wait_until(lambda: _listens(port), timeout=20)
        with log.open("wb") as out:
            dispatcher = subprocess.Popen(
                [sys.executable, "-m", "rowembed", "dispatcher"], env=env, stdout=out, stderr=out
            )
        listening = (  # this database's: another module's dispatcher may be running
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'rowembed-dispatcher' AND datname = current_database()"
        )
        wait_until(lambda: own_db.execute(listening).fetchone() == (1,), timeout=30)
        redis.terminate()
        redis.wait(10)
        messages = set()
        for _ in range(3):
            with pytest.raises(psycopg.errors.RaiseException) as timed_out:
                search_text(own_db, table, "anything", timeout_seconds=1)
            messages.add(str(timed_out.value).splitlines()[0].split(" s: ", 1)[1])
        assert (
            f"the dispatcher cannot reach its broker (broker 127.0.0.1:{port} unreachable)"
            in "".join(messages)
        )
    finally:
        if dispatcher is not None:
            dispatcher.terminate()
            dispatcher.wait(10)
        redis.kill()
        redis.wait(10)
    text = log.read_text()
    assert text.count("is unreachable") == 1 and "s3cret" not in text, text


def _listens(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_search_asks_for_a_bounded_number_of_candidates(own_db: Conn, table: str) -> None:
    """Refused with one line before any worker is asked (no request is made)."""
    t = sql.Identifier(table)
    own_db.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    v = create_vectorizer(own_db, table, ["body"], model=MODEL)
    own_db.execute("SELECT rowembed.enable_text_search(%s)", [v.name])
    for statement, most in (
        ("SELECT * FROM rowembed.search_text(NULL::{}, 'q', rerank => true, candidates => 1001)",
         1000),
        ("SELECT * FROM rowembed.search_text(NULL::{}, 'q', candidates => 10001)", 10000),
        ("SELECT * FROM rowembed.hybrid_search(NULL::{}, 'q', candidates => 10001)", 10000),
    ):  # fmt: skip
        with pytest.raises(psycopg.errors.RaiseException, match=f"from 1 to {most}, not"):
            own_db.execute(sql.SQL(statement).format(t))
    assert own_db.execute("SELECT count(*) FROM rowembed.query_request").fetchone() == (0,)
