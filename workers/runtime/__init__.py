"""The model runtime: tokenize -> length-sorted token-budget batches -> forward -> pool.

Imports neither Celery nor psycopg; the workers and the CLI wrap it.
"""

from .batching import plan_batches
from .chunking import ChunkPlan
from .encoder import Chunked, Encoded, Encoder, Tokenized
from .models import ModelNotFoundError, PoolingConfig, resolve_model_path
from .reranker import Reranker, Scored

__all__ = [
    "ChunkPlan",
    "Chunked",
    "Encoded",
    "Encoder",
    "ModelNotFoundError",
    "PoolingConfig",
    "Reranker",
    "Scored",
    "Tokenized",
    "plan_batches",
    "resolve_model_path",
]
