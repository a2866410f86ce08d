"""rowembed: keep pgvector embeddings of PostgreSQL rows current, and search them.

import rowembed
conn = rowembed.connect("postgresql://...")
rowembed.migrate(conn)
docs = rowembed.create_vectorizer(conn, "docs", ["title", "body"])
"""

from rowembed.pgplugin import (
    MigrationError,
    Vectorizer,
    VectorizerNotFound,
    connect,
    create_vectorizer,
    drop_vectorizer,
    get_vectorizer,
    list_vectorizers,
    migrate,
)
from rowembed.search import Hit, embed_query, search_vector
from rowembed.settings import Settings

__all__ = [
    "Hit",
    "MigrationError",
    "Settings",
    "Vectorizer",
    "VectorizerNotFound",
    "connect",
    "create_vectorizer",
    "drop_vectorizer",
    "embed_query",
    "get_vectorizer",
    "list_vectorizers",
    "migrate",
    "search_vector",
]
