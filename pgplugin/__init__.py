"""The PostgreSQL side of rowembed: migrations, SQL functions and vectorizers."""

from __future__ import annotations

from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg.types import TypeInfo

from .migrations import MigrationError, migrate
from .vectorizers import (
    Vectorizer,
    VectorizerNotFound,
    create_vectorizer,
    drop_vectorizer,
    get_vectorizer,
    list_vectorizers,
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
    "connect",
    "create_vectorizer",
    "drop_vectorizer",
    "get_vectorizer",
    "list_vectorizers",
    "migrate",
]
