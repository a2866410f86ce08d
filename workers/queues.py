"""The Celery queues' names (no Celery import: `rowembed.WorkerModels` needs them
without building an app)."""

EMBED_QUEUE = "rowembed.embed"  # hints: a vectorizer has queued rows
RERANK_QUEUE = "rowembed.rerank"  # interactive: score candidates
QUERY_QUEUE = "rowembed.query"  # interactive: embed a search query
TRAIN_QUEUE = "rowembed.train"  # fine-tuning jobs (rowembed.finetune): minutes to hours
# `rowembed worker --queues embed,rerank,query,train`: short names for the queues.
QUEUES = {"embed": EMBED_QUEUE, "rerank": RERANK_QUEUE, "query": QUERY_QUEUE, "train": TRAIN_QUEUE}
