"""Applies migrations/ (each once), then the idempotent files of sql/ (every
time), then the model families, in one transaction under a lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from rowembed.families import FAMILIES

# pg_advisory_xact_lock key: b"rowembed" as a big-endian bigint.
_LOCK_KEY = int.from_bytes(b"rowembed", "big")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database and this rowembed's migrations disagree."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("rowembed.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def idempotent_sql() -> str:
    """The idempotent files of sql/, in order, as one script."""
    folder = resources.files("rowembed.pgplugin").joinpath("sql")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return "\n".join(f.read_text("utf-8") for f in files)


def _write_model_families(conn: psycopg.Connection) -> None:
    """rowembed.model_family from rowembed.families, their one source."""
    conn.execute("DELETE FROM rowembed.model_family")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rowembed.model_family (name, pattern, rank, dimensions,"
            " query_instruction, passage_instruction, pooling, min_similarity, padding_side,"
            " max_tokens) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    f.name,
                    f.pattern,
                    rank,
                    Jsonb(f.dimensions),
                    f.query_instruction,
                    f.passage_instruction,
                    f.pooling,
                    f.min_similarity,
                    f.padding_side,
                    f.max_tokens,
                )
                for rank, f in enumerate(FAMILIES)
            ],
        )


def migrate(
    conn: psycopg.Connection,
    migrations: list[Migration] | None = None,
    idempotent: str | None = None,
) -> list[str]:
    """Bring the database up to date; return the versions applied now.
    `migrations` and `idempotent` (the script of sql/) default to this
    release's (upgrade tests pass an earlier release's).

    Everything happens in one transaction under an advisory lock, so concurrent
    runs wait for each other and a failure leaves the database as it was.
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        conn.execute("CREATE SCHEMA IF NOT EXISTS rowembed")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS rowembed.schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        recorded = dict(
            conn.execute("SELECT version, checksum FROM rowembed.schema_migrations").fetchall()
        )
        known = {m.version for m in migrations}
        unknown = sorted(set(recorded) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations this rowembed does not know: {', '.join(unknown)};"
                " upgrade rowembed"
            )
        for m in migrations:
            if m.version in recorded:
                if recorded[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version}_{m.name} was edited after it was applied"
                        f" (checksum {recorded[m.version][:12]} in the database,"
                        f" {m.checksum[:12]} on disk); released migrations must not change:"
                        " add a new migration instead"
                    )
                continue
            conn.execute(m.sql)  # type: ignore[arg-type]  # trusted file, many statements
            conn.execute(
                "INSERT INTO rowembed.schema_migrations (version, name, checksum)"
                " VALUES (%s, %s, %s)",
                [m.version, m.name, m.checksum],
            )
            applied_now.append(m.version)
        if conn.execute("SELECT to_regclass('rowembed.model_family')").fetchone() != (None,):
            _write_model_families(conn)
        script = idempotent or idempotent_sql()
        vector_schema = conn.execute(
            "SELECT quote_ident(n.nspname) FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        ).fetchone()
        if vector_schema is None:
            raise MigrationError("the vector extension is not installed")
        # pgvector's objects are named schema-qualified, and the functions are
        # made as they run: seeing pg_catalog only (an overload planted in a
        # schema others write must neither be called nor make a body ambiguous).
        # An earlier release's script (upgrade tests) named pgvector's types bare.
        if idempotent is None:
            conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute(script.replace("@extschema:vector@", vector_schema[0]))  # type: ignore[arg-type]
        conn.execute("RESET search_path")
    register_vector(conn)
    return applied_now
