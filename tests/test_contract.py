"""The whole contract as a seeded random walk: an application role's DML on a
vectorized table and on a twin without rowembed, interleaved with management
(create, alter and its switch, cancel, text search, migrate, index defer and
build, retry, drop, grants), with a real worker and dispatcher.

After every DML step, each statement that succeeded on the twin succeeded on
the vectorized table (and one that failed there failed here). At checkpoints,
once the worker has drained, every vectorizer's destination is the model's
view of the source: the keys of the rows with text, each with its text's hash
(a chunked one numbered 0..n-1), no orphan, its index there, no problem.

A failing walk is shrunk (steps left out while it still fails) and printed.
`make test` walks one seed; `make soak` walks several, longer."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.pgplugin import connect, migrate
from rowembed.pgplugin.indexes import build_index
from rowembed.pgplugin.queue import Queue
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import Vectorizer, get_vectorizer, list_vectorizers

from .conftest import MODEL, database_with_worker

Conn = psycopg.Connection[Any]
Step = tuple[str, tuple[Any, ...]]
KEYS = 24  # keys are drawn from 1..KEYS, so writes collide and keys move onto old ones
WORDS = [
    "river",
    "stone",
    "light",
    "garden",
    "winter",
    "market",
    "letter",
    "engine",
    "forest",
    "silver",
    "harbor",
]

DML = (
    "insert",
    "insert_many",
    "insert_many",
    "copy",
    "copy",
    "update_text",
    "update_other",
    "update_key",
    "swap_keys",
    "delete",
    "upsert",
    "merge",
    "update_from",
    "truncate",
)
# Management steps and their weights in a walk.
MANAGEMENT = {
    "create": 3,
    "alter": 3,
    "await_switch": 2,
    "cancel": 1,
    "text_search": 1,
    "migrate": 1,
    "defer_index": 1,
    "build_index": 1,
    "retry": 1,
    "drop": 1,
    "grant": 1,
    "checkpoint": 2,
}
CREATE_KINDS = ("plain", "chunked", "halfvec", "hnsw_binary")


def text(rng: random.Random) -> str | None:
    """Mostly a few words; sometimes NULL, empty, or far over 512 tokens."""
    pick = rng.random()
    if pick < 0.05:
        return None
    if pick < 0.1:
        return ""
    if pick < 0.14:
        return " ".join(rng.choice(WORDS) for _ in range(700))
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))


def walk(seed: int, steps: int) -> list[Step]:
    """The steps of a walk: data, so that a failing walk can be replayed and shrunk.
    Each step applies to whatever state the walk is in when it runs; every
    management step is followed by the application's writes."""
    rng = random.Random(seed)

    def dml() -> Step:
        params = (rng.randint(1, KEYS), rng.randint(1, KEYS), text(rng), text(rng))
        return rng.choice(DML), (*params, rng.randint(0, 99))

    out: list[Step] = [("create", ("plain",))]
    while len(out) < steps:
        if rng.random() < 0.3:
            kind = rng.choices(list(MANAGEMENT), weights=list(MANAGEMENT.values()))[0]
            params = (rng.choice(CREATE_KINDS),) if kind in ("create", "alter") else ()
            out += [(kind, params), dml(), dml()]
            if kind == "alter" and rng.random() < 0.5:  # most rebuilds run to their switch
                out += [("await_switch", ()), dml(), dml()]
        else:
            out.append(dml())
    return [*out, ("await_switch", ()), dml(), dml(), dml(), ("checkpoint", ())]


class ContractBroken(AssertionError):
    step: int | None = None  # where the walk broke it


@dataclass
class World:
    """One walk's tables (prefixed, so walks in one database never meet)."""

    url: str
    owner: Conn
    app: Conn
    twin_app: Conn
    prefix: str
    created: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def source(self) -> sql.Identifier:
        return sql.Identifier(f"{self.prefix}_docs")

    @property
    def twin(self) -> sql.Identifier:
        return sql.Identifier(f"{self.prefix}_twin")

    def vectorizers(self) -> list[Vectorizer]:
        return [v for v in list_vectorizers(self.owner) if v.source_table == f"{self.prefix}_docs"]

    def current(self) -> Vectorizer | None:
        found = [v for v in self.vectorizers() if v.replaces is None]
        return found[0] if found else None


def statement(
    kind: str, table: sql.Identifier, params: tuple[Any, ...]
) -> tuple[sql.Composable, list[Any]] | None:
    a, b, t1, t2, n = params
    match kind:
        case "insert":
            return sql.SQL(
                "INSERT INTO {} (id, title, body, views) VALUES (%s, %s, %s, %s)"
            ).format(table), [a, t2, t1, n]
        case "insert_many":
            return (
                sql.SQL("INSERT INTO {} (id, body) VALUES (%s, %s), (%s, %s), (%s, %s)").format(
                    table
                ),
                [a, t1, (a % KEYS) + 1, t2, b, t1],
            )
        case "update_text":
            return sql.SQL("UPDATE {} SET body = %s WHERE id = %s").format(table), [t1, a]
        case "update_other":
            return sql.SQL("UPDATE {} SET views = views + %s WHERE id >= %s").format(table), [n, a]
        case "update_key":
            return sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(table), [b, a]
        case "swap_keys":
            return (
                sql.SQL(
                    "UPDATE {} SET id = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)"
                ).format(table),
                [a, b, a, a, b],
            )
        case "delete":
            return sql.SQL("DELETE FROM {} WHERE id BETWEEN %s AND %s").format(table), [
                a,
                a + n % 3,
            ]
        case "upsert":
            return (
                sql.SQL(
                    "INSERT INTO {} (id, body) VALUES (%s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET body = excluded.body"
                ).format(table),
                [a, t1],
            )
        case "merge":
            return (
                sql.SQL(
                    "MERGE INTO {0} AS d"
                    " USING (VALUES (%s, %s::text), (%s, %s::text)) AS s(id, body)"
                    " ON d.id = s.id WHEN MATCHED AND s.body IS NULL THEN DELETE"
                    " WHEN MATCHED THEN UPDATE SET body = s.body"
                    " WHEN NOT MATCHED THEN INSERT (id, body) VALUES (s.id, s.body)"
                ).format(table),
                [a, t1, b, t2],
            )
        case "update_from":
            return (
                sql.SQL(
                    "UPDATE {} AS d SET title = s.title"
                    " FROM (VALUES (%s, %s::text), (%s, %s::text)) AS s(id, title)"
                    " WHERE d.id = s.id"
                ).format(table),
                [a, t1, b, t2],
            )
        case "truncate":
            return (sql.SQL("TRUNCATE {}").format(table), []) if n < 3 else None
    return None


def existing(world: World, params: tuple[Any, ...]) -> tuple[Any, ...]:
    """The step's first key as a rank among the rows there now, so that
    updates and deletes mostly find a row."""
    keys = [
        k
        for (k,) in world.owner.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(world.twin))
    ]
    if not keys:
        return params
    a, b, *rest = params
    return (keys[a % len(keys)], keys[b % len(keys)] if b % 2 else b, *rest)


def run_dml(world: World, kind: str, params: tuple[Any, ...]) -> None:
    if kind not in ("insert", "insert_many", "copy", "upsert"):
        params = existing(world, params)
    outcomes = []
    for conn, table in ((world.twin_app, world.twin), (world.app, world.source)):
        if kind == "copy":
            a, b, t1, t2, _ = params
            try:
                with (
                    conn.transaction(),
                    conn.cursor().copy(
                        sql.SQL("COPY {} (id, body) FROM STDIN").format(table)
                    ) as copy,
                ):
                    copy.write_row((a, t1))
                    copy.write_row((b, t2))
                outcomes.append(None)
            except psycopg.Error as exc:
                outcomes.append(exc.sqlstate)
            continue
        built = statement(kind, table, params)
        if built is None:
            return
        query, args = built
        try:
            with conn.transaction():
                conn.execute(query, args)
            outcomes.append(None)
        except psycopg.Error as exc:
            outcomes.append(f"{exc.sqlstate} {str(exc).strip().splitlines()[0]}")
    twin, vectorized = outcomes
    if (twin is None) != (vectorized is None):
        raise ContractBroken(
            f"{kind}{params}: without rowembed {twin or 'ok'}, with it {vectorized or 'ok'}"
        )


def create(world: World, kind: str) -> None:
    if world.current() is not None:
        return
    world.created += 1
    options: dict[str, Any] = {
        "plain": {},
        "chunked": {"chunking": "tokens", "chunk_tokens": 64, "chunk_overlap": 8},
        "halfvec": {"storage": "halfvec"},
        "hnsw_binary": {"index_method": "hnsw_binary"},
    }[kind]
    world.owner.execute(
        sql.SQL(
            "SELECT rowembed.create_vectorizer({}::regclass, ARRAY['title', 'body']::name[],"
            " name => %s, model => %s, destination => %s{})"
        ).format(
            sql.Literal(f"{world.prefix}_docs"),
            sql.SQL("").join(
                sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v))
                for k, v in options.items()
            ),
        ),
        [world.prefix, MODEL, f"{world.prefix}_emb_{world.created}"],
    )


def alter(world: World, kind: str) -> None:
    v = world.current()
    if v is None or any(z.replaces for z in world.vectorizers()):
        return
    options = {
        "plain": {"chunking": "none", "storage": "vector", "index_method": "hnsw"},
        "chunked": {"chunking": "tokens", "chunk_tokens": 64, "chunk_overlap": 8},
        "halfvec": {"storage": "halfvec"},
        "hnsw_binary": {"index_method": "hnsw_binary"},
    }[kind]
    world.owner.execute(
        sql.SQL("SELECT rowembed.alter_vectorizer(%s{})").format(
            sql.SQL("").join(
                sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v))
                for k, v in options.items()
            )
        ),
        [v.name],
    )


def wait(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 120,
    state: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ContractBroken(f"timed out waiting until {what}{state()}")
        time.sleep(0.2)


def rebuild_state(world: World) -> str:
    """What a switch waits for, to say so when it never comes."""
    rows = world.owner.execute(
        "SELECT name, rebuild, queued, in_flight, failed, index, problem, backfill"
        " FROM rowembed.status()"
    ).fetchall()
    return "; status: " + "; ".join(str(r) for r in rows)


def manage(world: World, kind: str, params: tuple[Any, ...]) -> None:
    owner = world.owner
    v = world.current()
    match kind:
        case "create":
            create(world, params[0])
        case "alter":
            alter(world, params[0])
        case "await_switch":
            if any(z.replaces for z in world.vectorizers()):
                wait(
                    lambda: not any(z.replaces for z in world.vectorizers()),
                    "the switch",
                    state=lambda: rebuild_state(world),
                )
        case "cancel" if v is not None:
            owner.execute("SELECT rowembed.cancel_alter(%s)", [v.name])
        case "text_search" if v is not None:
            owner.execute("SELECT rowembed.enable_text_search(%s)", [v.name])
        case "migrate":
            migrate(owner)
        case "defer_index" if v is not None and v.index_method != "none":
            owner.execute("SELECT rowembed.defer_index(%s)", [v.name])
        case "build_index" if v is not None:
            with psycopg.connect(world.url, autocommit=True) as builder:
                build_index(builder, v.name, memory="64MB", parallel_workers=0)
        case "retry" if v is not None:
            owner.execute("SELECT rowembed.retry_failed(%s)", [v.name])
        case "drop" if v is not None:
            owner.execute("SELECT rowembed.drop_vectorizer(%s)", [v.name])
        case "grant":
            owner.execute("SELECT rowembed.grant_worker('contract_worker')")
            owner.execute("SELECT rowembed.grant_searcher('contract_searcher')")
        case "checkpoint":
            checkpoint(world)


def expected(world: World, v: Vectorizer) -> dict[int, bytes]:
    """key -> hash of the text the model embeds, for rows with text."""
    (expression,) = world.owner.execute(
        "SELECT rowembed._text_sql(z, 's') FROM rowembed.vectorizer z WHERE z.id = %s", [v.id]
    ).fetchone()  # type: ignore[misc]
    rows = world.owner.execute(
        sql.SQL("SELECT s.id, rowembed._text_hash({}) FROM {} AS s").format(
            sql.SQL(expression), v.source
        )
    ).fetchall()
    return {key: digest for key, digest in rows if digest is not None}


def checkpoint(world: World) -> None:
    """Once drained (and switched), every destination is the model's view of the source."""
    wait(lambda: not any(z.replaces for z in world.vectorizers()), "the switch", timeout=180)
    for v in world.vectorizers():
        queue = Queue(v)
        wait(lambda q=queue: q.is_drained(world.owner), f"{v.name} drained", timeout=180)
        failed = world.owner.execute(
            "SELECT key, last_error FROM rowembed.errors() WHERE vectorizer = %s", [v.name]
        ).fetchall()
        if failed:
            raise ContractBroken(f"{v.name}: rows failed: {failed}")
        want = expected(world, v)
        stored = world.owner.execute(
            sql.SQL("SELECT id, {}, text_hash FROM {} ORDER BY id, 2").format(
                sql.SQL("chunk") if v.chunked else sql.SQL("0"), v.destination
            )
        ).fetchall()
        got: dict[int, list[tuple[int, bytes]]] = {}
        for key, chunk, digest in stored:
            got.setdefault(key, []).append((chunk, digest))
        if set(got) != set(want):
            raise ContractBroken(
                f"{v.name}: keys {sorted(got)} stored, {sorted(want)} expected"
                f" (orphans {sorted(set(got) - set(want))}, missing {sorted(set(want) - set(got))})"
            )
        for key, chunks in got.items():
            if [c for c, _ in chunks] != list(range(len(chunks))):
                raise ContractBroken(f"{v.name}: key {key} has chunks {[c for c, _ in chunks]}")
            if {d for _, d in chunks} != {want[key]}:
                raise ContractBroken(f"{v.name}: key {key} embeds an old text")
        wait(
            lambda name=v.name: status(world.owner, name)[0].index.endswith(
                (": built", "exact scans")
            ),
            f"{v.name}'s index is built",
            timeout=120,
        )
        problem = get_vectorizer(world.owner, v.name).problem
        if problem is not None:
            raise ContractBroken(f"{v.name}: {problem}")


def run_walk(url: str, steps: list[Step], prefix: str) -> None:
    with (
        connect(url) as owner,
        psycopg.connect(url, autocommit=True, user="contract_app") as app,
        psycopg.connect(url, autocommit=True, user="contract_app") as twin_app,
    ):
        world = World(url, owner, app, twin_app, prefix)
        for table in (world.source, world.twin):
            owner.execute(
                sql.SQL(
                    "CREATE TABLE {} (id int PRIMARY KEY, title text, body text,"
                    " views int NOT NULL DEFAULT 0)"
                ).format(table)
            )
            owner.execute(
                sql.SQL(
                    "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO contract_app"
                ).format(table)
            )
        try:
            for n, (kind, params) in enumerate(steps):
                try:
                    if kind in DML:
                        run_dml(world, kind, params)
                    else:
                        manage(world, kind, params)
                except ContractBroken as exc:
                    broken = ContractBroken(f"step {n} {kind}{shown(params)}: {exc}")
                    broken.step = n
                    raise broken from None
                except psycopg.Error as exc:
                    if kind in DML:
                        raise
                    # A management call may refuse (say, alter during a rebuild): that is
                    # the caller's error, never the application's.
                    world.log.append(f"step {n} {kind}: {exc}")
        finally:
            for v in world.vectorizers():
                with contextlib.suppress(psycopg.Error):
                    owner.execute("SELECT rowembed.drop_vectorizer(%s)", [v.name])


def shown(params: tuple[Any, ...]) -> str:
    """A step's parameters, long texts cut."""
    return (
        "(" + ", ".join(repr(p)[:40] + ("...'" if len(repr(p)) > 40 else "") for p in params) + ")"
    )


def shrink(url: str, steps: list[Step], budget: float, prefix: str) -> list[Step]:
    """Leave out steps, last first, while the walk still breaks the contract."""
    deadline = time.monotonic() + budget
    i = len(steps) - 2  # the first create stays
    attempt = 0
    while i > 0 and time.monotonic() < deadline:
        candidate = steps[:i] + steps[i + 1 :]
        attempt += 1
        try:
            run_walk(url, candidate, f"{prefix}_s{attempt}")
        except ContractBroken:
            steps = candidate
        except Exception:
            pass
        i -= 1
    return steps


@pytest.fixture(scope="module")
def contract_db(
    postgres: EmbeddedPostgres, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("contract-worker") / "worker.log"
    with database_with_worker(postgres, redis_url, log) as (url, _worker):
        with connect(url) as admin:
            for role in ("contract_app", "contract_worker", "contract_searcher"):
                if not admin.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]
                ).fetchone():
                    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        yield url


def check_walk(url: str, seed: int, steps: int) -> None:
    plan = walk(seed, steps)
    try:
        run_walk(url, plan, f"w{seed}")
    except ContractBroken as exc:
        if exc.step is not None:  # what came after the break plays no part
            plan = plan[: exc.step + 1]
        smallest = shrink(
            url,
            plan,
            budget=float(os.environ.get("ROWEMBED_SHRINK_SECONDS", "300")),
            prefix=f"w{seed}",
        )
        listing = "\n".join(f"  {kind}{shown(params)}" for kind, params in smallest)
        pytest.fail(
            f"seed {seed}: {exc}\nshrunk to {len(smallest)} steps:\n{listing}", pytrace=False
        )


def test_the_contract_holds_on_a_seeded_walk(contract_db: str) -> None:
    check_walk(contract_db, seed=21, steps=60)  # four rebuilds run to their switch


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(1, 9))
def test_the_contract_holds_on_long_walks(contract_db: str, seed: int) -> None:
    check_walk(contract_db, seed=seed, steps=500)
