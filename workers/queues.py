"""The Celery queues' names (no Celery import: `rowembed.WorkerModels` needs them
without building an app)."""

EMBED_QUEUE = "rowembed.embed"  # hints: a vectorizer has queued rows
RERANK_QUEUE = "rowembed.rerank"  # interactive: score candidates
QUERY_QUEUE = "rowembed.query"  # interactive: embed a search query
# `rowembed worker --queues embed,rerank,query`: short names for the queues.
QUEUES = {"embed": EMBED_QUEUE, "rerank": RERANK_QUEUE, "query": QUERY_QUEUE}
