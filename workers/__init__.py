"""The workers (`rowembed.workers`, from the folder workers/): the Celery app and
its tasks, the dispatcher that turns table changes into hints, the pipeline that
claims, embeds and stores batches, the worker's policy, and runtime/ (the model
runtime, which imports neither Celery nor psycopg)."""
