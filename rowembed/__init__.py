"""rowembed: keep pgvector embeddings of PostgreSQL rows current, and search them.

    import rowembed
    conn = rowembed.connect("postgresql://...")
    rowembed.migrate(conn)
    docs = rowembed.create_vectorizer(conn, "docs", ["title", "body"])
    hits = rowembed.search(conn, docs, "key rotation", rowembed.WorkerModels(), k=5)

The package maps the repository's folders: pgplugin/ is `rowembed.pgplugin`
(the PostgreSQL side), migrations/ is `rowembed.migrations`, workers/ is
`rowembed.workers` (Celery app, pipeline, model runtime); rowembed/dev/ is
`rowembed.dev` (demo, bench, embedded servers). Importing `rowembed` loads
neither torch nor Celery, and builds no Celery app.
"""

from rowembed._search import LocalModels, Models, WorkerModels, embed_query, search
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
from rowembed.pgplugin.search import Hit, search_vector
from rowembed.settings import Settings

__all__ = [
    "Hit",
    "LocalModels",
    "MigrationError",
    "Models",
    "Settings",
    "Vectorizer",
    "VectorizerNotFound",
    "WorkerModels",
    "connect",
    "create_vectorizer",
    "drop_vectorizer",
    "embed_query",
    "get_vectorizer",
    "list_vectorizers",
    "migrate",
    "search",
    "search_vector",
]
