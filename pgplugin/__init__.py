"""The PostgreSQL side of rowembed (`rowembed.pgplugin`, from the folder pgplugin/).

sql/ holds the idempotent SQL functions, re-applied by every `rowembed migrate`
after the numbered migrations of migrations/ (`rowembed.migrations`); see
sql/README.md for which change goes where. The Python modules here are the only
place Python speaks rowembed's SQL: each wraps a group of SQL functions with
typed calls that bind arguments by name (`_call.py`).

- migrations.py: the runner.            - vectorizers.py: the catalog; create, drop.
- queue.py: a worker's claims and writes. - backfill.py: queueing existing rows.
- indexes.py: deferred index builds.    - search.py: search and calibration.
- status.py: status, errors, sizes.     - wakeups.py: the NOTIFY channel.
- metrics.py: what `rowembed metrics` reads beyond status (lag, recent batches).
- finetune.py: fine-tuning's reads (pairs, texts, hard negatives).
- training_jobs.py: fine-tuning jobs (rowembed.finetune) and a train worker's side.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg.types import TypeInfo

from .migrations import MigrationError, migrate
from .vectorizers import (
    Vectorizer,
    VectorizerNotFound,
    alter_vectorizer,
    cancel_alter,
    create_vectorizer,
    drop_vectorizer,
    get_vectorizer,
    list_vectorizers,
    set_min_similarity,
)


def connect(url: str, application_name: str = "rowembed") -> psycopg.Connection[Any]:
    """An autocommit connection, with the pgvector types registered once the
    extension exists (`migrate` creates it and registers them)."""
    conn = psycopg.connect(url, autocommit=True, application_name=application_name)
    if TypeInfo.fetch(conn, "vector") is not None:
        register_vector(conn)
    return conn


__all__ = [
    "MigrationError",
    "Vectorizer",
    "VectorizerNotFound",
    "alter_vectorizer",
    "cancel_alter",
    "connect",
    "create_vectorizer",
    "drop_vectorizer",
    "get_vectorizer",
    "list_vectorizers",
    "migrate",
    "set_min_similarity",
]
