"""What one worker process keeps between tasks: a connection and loaded models."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from rowembed.pgplugin import connect
from rowembed.settings import Settings

from .progress import ChunkProgress

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .policy import ClaimSize
    from .runtime import Chunked, ChunkPlan, Encoded, Encoder, Reranker, Tokenized
    from .runtime.stages import StageClock

log = logging.getLogger(__name__)


class WorkerState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conns: tuple[psycopg.Connection[Any], psycopg.Connection[Any]] | None = None
        # The models loaded, least recently used first (at most MAX_LOADED_MODELS each).
        self._encoders: OrderedDict[str, LazyEncoder] = OrderedDict()
        self._rerankers: OrderedDict[str, Reranker] = OrderedDict()
        self._claim_size: ClaimSize | None = None
        # Long rows' chunks embedded so far, kept between tasks (pipeline.drain).
        self.progress = ChunkProgress()
        self._name: str | None = None
        # How its sessions show in pg_stat_activity: SQL callers waiting for a
        # query worker, and the metrics, tell the kinds apart by it.
        self.application_name = "rowembed-worker"

    @property
    def name(self) -> str:
        """host:pid/device, as batch_stats.worker records it (and metrics label it)."""
        if self._name is None:
            from .runtime.forward import pick_device

            device = pick_device(self.settings.device)
            self._name = f"{socket.gethostname()}:{os.getpid()}/{device}"
        return self._name

    def load_served_models(self, *, query: bool, rerank: bool) -> None:
        """Load the database's vectorizers' models (query) and rerank models, so
        the first search does not wait for them. One that cannot be loaded is
        logged; its requests answer with the error."""
        try:  # the sessions stay open: callers see a query worker connected
            with self.connections() as (conn, _):
                rows = conn.execute(
                    "SELECT DISTINCT model, rerank_model FROM rowembed.vectorizer"
                ).fetchall()
        except psycopg.Error as exc:
            log.warning("models not loaded ahead: %s", str(exc).strip().splitlines()[0])
            return
        wanted: list[tuple[Callable[[str], object], str]] = []
        wanted += [(lambda m: self.encoder(m).dimensions, m) for m in {m for m, _ in rows} if query]
        wanted += [(self.reranker, r) for r in {r for _, r in rows} if rerank]
        for load, name in sorted(wanted, key=lambda w: w[1]):
            try:
                load(name)  # an encoder is lazy: asking its size loads it
            except Exception as exc:  # a missing model: its requests say so
                log.warning("model %s not loaded ahead: %s", name, str(exc).strip()[:300])
            else:
                log.info("model %s loaded", name)

    def say_which_models_are_missing(self) -> None:
        """One line at start per vectorizer model not on this machine: it downloads
        on first use, or (offline) its rows wait for it."""
        from huggingface_hub import constants

        from .runtime import ModelNotFoundError, resolve_model_path

        try:
            with connect(self.settings.require_database(), self.application_name) as conn:
                models = [
                    m for (m,) in conn.execute("SELECT DISTINCT model FROM rowembed.vectorizer")
                ]
        except psycopg.Error:
            return  # the tasks say what is wrong with the database
        for model in sorted(models):
            try:
                resolve_model_path(model, allow_download=False)
            except ModelNotFoundError:
                if constants.HF_HUB_OFFLINE:
                    log.warning(
                        "model %s is not on this machine and downloads are off (HF_HUB_OFFLINE):"
                        " its vectorizers' rows wait for it (rowembed status shows it)",
                        model,
                    )
                else:
                    log.warning("model %s is not on this machine: it downloads on first use", model)

    def claim_size(self) -> ClaimSize:
        """Adapts to this process's measured rate; a batch aims at
        ROWEMBED_BATCH_SECONDS of work."""
        if self._claim_size is None:
            from .policy import ClaimSize, claim_rows

            self._claim_size = ClaimSize(claim_rows(self.settings), self.settings.batch_seconds)
        return self._claim_size

    @contextmanager
    def connections(self) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
        """Two sessions: one writes, one claims and reads the next batch meanwhile."""
        if self._conns is None or any(c.closed for c in self._conns):
            self._close()
            url = self.settings.require_database()
            writer = connect(url, self.application_name)
            try:
                self._conns = (writer, connect(url, f"{self.application_name}-claim"))
            except BaseException:
                writer.close()
                raise
        try:
            yield self._conns
        except psycopg.OperationalError:
            # The server went away or restarted: reconnect on the next task.
            self._close()
            raise

    def _close(self) -> None:
        for conn in self._conns or ():
            conn.close()
        self._conns = None

    def encoder(self, model: str) -> LazyEncoder:
        if model not in self._encoders:
            self._encoders[model] = LazyEncoder(model, self.settings)
        return _most_recent(self._encoders, model)

    def reranker(self, model: str) -> Reranker:
        if model not in self._rerankers:
            from .runtime import Reranker

            self._rerankers[model] = Reranker.load(
                model,
                device=self.settings.device,
                token_budget=self.settings.token_budget,
                attention=self.settings.attention,
            )
        return _most_recent(self._rerankers, model)


class LazyEncoder:
    """Loads the model on first use, inside the pipeline's error handling, so a
    missing model is recorded on the rows (and retried) like any model failure."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self._loaded: Encoder | None = None
        self._loading = threading.Lock()

    def _encoder(self) -> Encoder:
        with self._loading:  # the claim thread and the model stage may both ask first
            if self._loaded is None:
                from .runtime import Encoder

                self._loaded = Encoder.load(
                    self.name,
                    device=self.settings.device,
                    token_budget=self.settings.token_budget,
                    attention=self.settings.attention,
                )
        return self._loaded

    @property
    def dimensions(self) -> int:
        return self._encoder().dimensions

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return self._encoder().tokenize(texts)

    def encode_tokenized(self, tokenized: Tokenized, clock: StageClock | None = None) -> Encoded:
        return self._encoder().encode_tokenized(tokenized, clock)

    def encode(self, texts: Sequence[str]) -> Encoded:
        return self._encoder().encode(texts)

    def chunk(self, texts: Sequence[str], plan: ChunkPlan, instruction: str = "") -> Chunked:
        return self._encoder().chunk(texts, plan, instruction)


_state: WorkerState | None = None


def worker_state() -> WorkerState:
    """The process's state, made on first use (after the pool forked)."""
    global _state
    if _state is None:
        _state = WorkerState(Settings.from_env())
    return _state


# Models a worker keeps loaded, of each kind; the least recently used goes first.
MAX_LOADED_MODELS = 8

T = TypeVar("T")


def _most_recent(loaded: OrderedDict[str, T], model: str) -> T:
    """`loaded[model]`, now the most recently used; beyond MAX_LOADED_MODELS the
    least recently used is let go (its memory with it)."""
    loaded.move_to_end(model)
    while len(loaded) > MAX_LOADED_MODELS:
        loaded.popitem(last=False)
    return loaded[model]
