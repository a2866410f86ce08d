"""The `rowembed` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg

from rowembed.logs import LOG_FORMATS, configure_logging, libraries_log_through_logging
from rowembed.settings import Settings, SettingsError

if TYPE_CHECKING:
    from rowembed._search import Models


def _settings(args: argparse.Namespace) -> Settings:
    # Flags win over the environment; children (worker pool, dispatcher) read the env.
    if args.database_url:
        os.environ["ROWEMBED_DATABASE_URL"] = args.database_url
    if args.redis_url:
        os.environ["ROWEMBED_REDIS_URL"] = args.redis_url
    return Settings.from_env()


def cmd_migrate(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect, migrate
    from rowembed.pgplugin.queries import loopback_problem
    from rowembed.pgplugin.vectorizers import grant

    with connect(_settings(args).require_database()) as conn:
        applied = migrate(conn)
        for kind in ("creator", "worker", "searcher"):
            for role in getattr(args, f"grant_{kind}") or ():
                grant(conn, kind, role)
        problem = loopback_problem(conn)
    print(f"applied {', '.join(applied)}" if applied else "already up to date")
    if problem is not None:  # everything else works; say it once, with the fix
        print(f"rowembed: warning: {problem[0]}. {problem[1]}", file=sys.stderr)
    return 0


def _own_sessions(url: str, who: str) -> None:
    """A worker or dispatcher behind a transaction pooler stops at start, saying why."""
    from rowembed.pgplugin.sessions import SharedSessions, require_own_sessions

    try:
        require_own_sessions(url, who)
    except SharedSessions as exc:
        raise SettingsError(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    database_url = settings.require_database()
    redis_url = settings.require_redis()
    _own_sessions(database_url, "worker")
    from rowembed.workers.celery_app import app, require_broker
    from rowembed.workers.dispatcher import broker_location

    require_broker(app, broker_location(redis_url))
    from rowembed.workers.queues import QUEUES

    served = args.queues.split(",")
    unknown = set(served) - set(QUEUES)
    if unknown:
        raise SettingsError(f"unknown queues {sorted(unknown)}; choose from {sorted(QUEUES)}")
    interactive = [q for q in served if q in ("query", "rerank")]
    if args.log_format == "json":
        libraries_log_through_logging()
    children: list[subprocess.Popen[bytes]] = []
    if not args.no_dispatcher:
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "rowembed", "--loglevel", args.loglevel, "dispatcher"]
            )
        )
    if "train" in served and len(served) > 1:
        # A job holds its process for hours: it never stands in the way of the rest.
        children.append(_worker_process(args, "train", f"train-{args.name or '%h'}"))
        served.remove("train")
    if "embed" in served and interactive:
        # Searches never wait behind embedding: queries and reranks have a
        # worker process of their own, its models loaded before it is ready.
        children.append(_worker_process(args, ",".join(interactive), f"query-{args.name or '%h'}"))
        served = ["embed"]
    # prefork where CUDA works: it initialises in the pool's child.
    pool = args.pool or ("prefork" if {"embed", "train"} & set(served) else "threads")
    from rowembed.workers.state import worker_state

    if "embed" in served:
        worker_state().say_which_models_are_missing()
    if pool != "prefork":  # tasks run in this process: load their models now
        state = worker_state()
        if "embed" not in served:
            state.application_name = "rowembed-query-worker"
        state.load_served_models(rerank="rerank" in served, query="query" in served)
    try:
        app.worker_main(
            [
                # No banner (a global option of `celery`): stdout stays one JSON object per line.
                *(["--quiet"] if args.log_format == "json" else []),
                "worker",
                f"--loglevel={args.loglevel}",
                f"--concurrency={args.concurrency}",
                f"--pool={pool}",
                "-Q",
                ",".join(QUEUES[q] for q in served),
                "--without-gossip",
                "--without-mingle",
                *(["-n", args.name] if args.name else []),
            ]
        )
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
    return 0


def _worker_process(args: argparse.Namespace, queues: str, name: str) -> subprocess.Popen[bytes]:
    """Another `rowembed worker` serving `queues`, with this one's logging."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "rowembed", "--loglevel", args.loglevel),
            *("--log-format", args.log_format, "worker", "--no-dispatcher"),
            *("--queues", queues, "--name", name),
        ]
    )


def cmd_dispatcher(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from rowembed.workers.celery_app import app, require_broker
    from rowembed.workers.dispatcher import CeleryHints, Dispatcher, broker_location
    from rowembed.workers.queues import EMBED_QUEUE

    redis_url = settings.require_redis()
    _own_sessions(settings.require_database(), "dispatcher")
    require_broker(app, broker_location(redis_url))
    hints = CeleryHints(
        app, EMBED_QUEUE, settings.max_pending_hints, broker=broker_location(redis_url)
    )
    dispatcher = Dispatcher(
        settings.require_database(),
        hints,
        sweep_seconds=settings.sweep_seconds,
        poll_seconds=settings.poll_seconds,
        backfill_chunk=settings.backfill_chunk,
        index_memory=settings.index_memory,
        index_workers=settings.index_workers,
        send_queries=hints.queries,
        send_reranks=hints.reranks,
        send_training=hints.training,
        broker_problem=hints.problem,
    )
    stop = threading.Event()
    try:
        dispatcher.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from rowembed.metrics import serve

    settings = _settings(args)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            settings.require_database(),
            args.port or settings.metrics_port,
            args.address,
            settings.metrics_token,
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from rowembed._search import search
    from rowembed.pgplugin import connect, get_vectorizer

    settings = _settings(args)
    # With a broker, the workers answer through the database (rowembed.search_text,
    # as psql would); without one, or with --local, the models run here.
    local = args.local or not settings.redis_url
    if args.rerank_model and not local:
        raise SettingsError(
            "--rerank-model needs --local: the workers rerank with the vectorizer's rerank_model"
        )
    if not args.text.strip():
        raise SettingsError("the query text is empty: give the text to search for")
    models = _models(args, settings) if local else None
    with connect(settings.require_database()) as conn:
        vectorizer = get_vectorizer(conn, args.name)
        hits = search(
            conn,
            vectorizer,
            args.text,
            models,
            k=args.k,
            min_similarity=args.min_similarity,
            filter=args.filter,
            rerank=args.rerank,
            candidates=args.candidates,
            rerank_model=args.rerank_model,
            timeout=None if local else args.timeout,
        )
    for hit in hits:
        if args.json:
            record = {
                "similarity": hit.similarity,
                "rerank_score": hit.rerank_score,
                "row": hit.row,
            }
            print(json.dumps(record, default=str))
            continue
        shown = [hit.row.get(c) for c in [*vectorizer.pk_columns, *vectorizer.text_columns]]
        text = " | ".join(str(v) for v in shown).replace("\n", " ")
        rerank = f"  rerank {hit.rerank_score:7.3f}" if hit.rerank_score is not None else ""
        print(f"similarity {hit.similarity:.3f}{rerank}  {text[:150]}")
    if not hits and not args.json:
        print("no rows at or above the similarity threshold")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect
    from rowembed.pgplugin.status import status

    with connect(_settings(args).require_database()) as conn:
        rows = status(conn)
    print(
        f"{'name':<20} {'model':<38} {'queued':>8} {'in flight':>9} {'failed':>7}"
        f" {'embedded':>9} {'rows/s':>8} {'eta':>8}  backfill; storage, index"
    )
    for r in rows:
        eta_text = "-" if r.eta_seconds is None else f"{r.eta_seconds:.0f}s"
        rate = "-" if r.rows_per_second is None else f"{r.rows_per_second:.1f}"
        print(
            f"{r.name:<20} {r.model:<38} {_count(r.queued):>8} {_count(r.in_flight):>9}"
            f" {_count(r.failed):>7} {_count(r.embedded):>9} {rate:>8} {eta_text:>8}"
            f"  {r.backfill or '-'}; {r.storage}, {r.index or '-'}"
        )
        if r.chunks is not None:
            print(f"{'':<20} {_count(r.chunks)} chunks")
        if r.rebuild:
            print(f"{'':<20} {r.rebuild}")
        if r.training:
            print(f"{'':<20} fine-tuning {r.training}")
        if r.problem:
            print(f"{'':<20} BROKEN: {r.problem}")
    return 0


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def cmd_index(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect, get_vectorizer
    from rowembed.pgplugin.indexes import build_index, defer_index
    from rowembed.pgplugin.status import status

    settings = _settings(args)
    with connect(settings.require_database()) as conn:
        get_vectorizer(conn, args.name)  # a clear error if there is none
        if args.defer:
            defer_index(conn, args.name)
        elif args.build:
            seconds = build_index(
                conn,
                args.name,
                memory=settings.index_memory,
                parallel_workers=settings.index_workers,
            )
            if seconds is None:
                print(f"index of {args.name}: nothing to build (or another session builds it)")
            else:
                print(f"index of {args.name} built in {seconds:.1f} s")
        (current,) = status(conn, args.name)
        print(f"{args.name}: {current.storage}, index {current.index}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from rowembed.pgplugin import connect, get_vectorizer
    from rowembed.pgplugin.backfill import cancel_backfill, start_backfill
    from rowembed.pgplugin.status import status

    with connect(_settings(args).require_database()) as conn:
        get_vectorizer(conn, args.name)  # a clear error if there is none
        if args.cancel:
            dropped = cancel_backfill(conn, args.name)
            print(f"backfill of {args.name} cancelled; {dropped} queued rows dropped")
            return 0
        outcome = start_backfill(conn, args.name)
        print(f"backfill of {args.name}: {outcome} (the dispatcher queues it chunk by chunk)")
        if args.no_wait:
            return 0
        with tqdm(unit="rows", desc=args.name, dynamic_ncols=True) as bar:
            while True:
                (now,) = status(conn, args.name)
                bar.total = now.embedded + now.pending
                bar.update(now.embedded - bar.n)
                bar.set_postfix_str(now.backfill or "")
                if now.pending == 0 and now.backfill and not now.backfill.startswith("running"):
                    return 0
                time.sleep(1)


def cmd_alter(args: argparse.Namespace) -> int:
    import time

    from rowembed.pgplugin import (
        alter_vectorizer,
        cancel_alter,
        connect,
        get_vectorizer,
        list_vectorizers,
    )
    from rowembed.pgplugin.options import ALTER_OPTIONS
    from rowembed.pgplugin.status import status
    from rowembed.pgplugin.vectorizers import complete_alters

    with connect(_settings(args).require_database()) as conn:
        if args.cancel:
            cancelled = cancel_alter(conn, args.name)
            print(f"{args.name}: {'rebuild cancelled' if cancelled else 'no rebuild in progress'}")
            return 0
        # The CLI's flags are the SQL function's options (--chunk-tokens: chunk_tokens).
        options = {key: getattr(args, key) for key in ALTER_OPTIONS if hasattr(args, key)}
        running = [v for v in list_vectorizers(conn) if v.replaces == args.name]
        if args.wait and not any(options.values()):
            # `alter NAME --wait` alone attaches to the rebuild already running.
            get_vectorizer(conn, args.name)  # a clear error if there is none
            if not running:
                print(f"{args.name}: no rebuild in progress")
                return 0
            (next_,) = running
            print(f"{args.name}: waiting for the rebuild in progress as {next_.name}", flush=True)
        else:
            next_ = alter_vectorizer(conn, args.name, **options)
            if next_.name == args.name:
                print(f"{args.name}: changed in place")
                return 0
            print(
                f"{args.name}: rebuilding as {next_.name} ({next_.model}); searches use"
                f" {args.name} as it is until the rebuild is complete (rowembed status shows"
                " progress)",
                flush=True,
            )
        if not args.wait:
            return 0
        while True:
            if args.name in complete_alters(conn):
                print(f"{args.name}: switched to the rebuilt embeddings")
                return 0
            (now,) = status(conn, next_.name) or (None,)
            if now is None:  # cancelled meanwhile, or switched by the dispatcher
                # A switch gives the replacement the name; a cancel leaves the original.
                switched = get_vectorizer(conn, args.name).id == next_.id
                print(f"{args.name}: {'switched' if switched else 'rebuild ended'}")
                return 0
            print(f"{next_.name}: {now.rebuild}", flush=True)
            time.sleep(2)


def cmd_errors(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect, get_vectorizer
    from rowembed.pgplugin.status import errors

    with connect(_settings(args).require_database()) as conn:
        if args.name is not None:
            get_vectorizer(conn, args.name)  # a clear error if there is none
        rows = errors(conn, args.name)
    for e in rows:
        state = "parked" if e.parked else "retrying"
        print(
            f"{e.vectorizer}  {json.dumps(e.key)}  {state} after {e.attempts} attempts:"
            f" {e.last_error}"
        )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect, get_vectorizer
    from rowembed.pgplugin.queue import retry_failed

    with connect(_settings(args).require_database()) as conn:
        get_vectorizer(conn, args.name)  # a missing one is worded as for every command
        count = retry_failed(conn, args.name)
    print(f"{count} failed rows queued again")
    return 0


# Measured by bench/thresholds.py (bench/RESULTS.md).
ROWS_ONLY = (
    "{action}: rows are more alike to each other than a short query is to its answer, so a"
    " threshold from the table's own rows hid 6-27% of right answers (bench/thresholds.py);"
    " pass a few queries your users ask"
)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rowembed.pgplugin import connect, get_vectorizer, set_min_similarity
    from rowembed.pgplugin.search import similarity_profile, suggest_min_similarity

    settings = _settings(args)
    if args.apply and not args.query:
        raise SettingsError(ROWS_ONLY.format(action="--apply needs --query TEXT"))
    with connect(settings.require_database()) as conn:
        vectorizer = get_vectorizer(conn, args.name)
        queries = None
        if args.query:
            models = _models(args, settings)
            queries = [
                models.encode_query(vectorizer.model, vectorizer.query_instruction + text)
                for text in args.query
            ]
        profile = similarity_profile(conn, args.name, queries, sample=args.sample, k=args.k)
        source = f"{len(args.query)} queries" if args.query else f"{args.sample} of its own rows"
        print(f"similarity on {vectorizer.name}, queries: {source}")
        print(f"{'':<8} {'n':>7} {'p10':>7} {'p50':>7} {'p90':>7} {'p99':>7}")
        for p in profile.values():
            print(
                f"{p.measure:<8} {p.n:>7} {p.p10:>7.3f} {p.p50:>7.3f} {p.p90:>7.3f} {p.p99:>7.3f}"
            )
        suggested = suggest_min_similarity(profile)
        print(
            f"current min_similarity {vectorizer.min_similarity}; suggested {suggested}"
            " (above 99% of random pairs)"
        )
        if not args.query:
            print(
                f"rowembed: warning: {ROWS_ONLY.format(action='calibrated without --query')}",
                file=sys.stderr,
            )
        if args.apply:
            set_min_similarity(conn, args.name, suggested)
            print(f"min_similarity of {args.name} set to {suggested}")
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> Models:
    from rowembed._search import LocalModels, WorkerModels

    if args.local or not settings.redis_url:
        return LocalModels(settings.device)
    from rowembed.workers.celery_app import app

    # WorkerUnavailable says it in one line: no log of each reconnect to Redis.
    logging.getLogger("celery.backends").setLevel(logging.CRITICAL + 1)
    return WorkerModels(app, timeout=getattr(args, "timeout", 15.0))


def cmd_bench(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.write_load:
        from rowembed.dev import write_load

        args.rows = args.rows or write_load.DEFAULT_ROWS  # per table
        return write_load.main(settings, args)
    from rowembed.dev.bench import main as bench_main

    return bench_main(settings, args.rows or 2000, args.model, args.json, args.quick)


def add_write_load_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the write-load bench (`rowembed bench --write-load`, bench/write_load.py)."""
    p.add_argument(
        "--clients",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 4, 16, 64],
        help="write load: client counts, comma-separated (1,4,16,64)",
    )
    p.add_argument("--seconds", type=float, default=10, help="write load: each pgbench run (10)")
    p.add_argument("--runs", type=int, default=3, help="write load: runs per table and count (3)")
    p.add_argument(
        "--lag-seconds",
        type=float,
        default=20,
        help="write load: updates with a worker running, lag sampled (20; 0: skip)",
    )
    p.add_argument("--lag-rows", type=int, default=2000, help="write load: live table rows (2000)")


def cmd_finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rowembed.finetune import FineTuneOptions, reranker_directory, run_finetune
    from rowembed.pgplugin import connect
    from rowembed.pgplugin.finetune import PairsError
    from rowembed.workers.runtime.training import TrainingConfig

    settings = _settings(args)
    if args.on_workers:
        return _finetune_on_workers(args, settings)
    if not args.output:
        raise SettingsError("finetune: give --output DIR (a new directory), or --on-workers")
    options = FineTuneOptions(
        output=Path(args.output).resolve(),  # the model's name: the workers' cwd is not ours
        negatives=args.negatives,
        held_out=args.held_out,
        eval_rows=args.eval_rows,
        switch_if_better=args.switch_if_better,
        device=args.device or settings.device,
        training=TrainingConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_passage_tokens=args.max_passage_tokens,
        ),
        rerank_output=reranker_directory(Path(args.output).resolve()) if args.rerank else None,
        rerank_depth=args.rerank_depth,
    )
    bars: dict[str, Any] = {}  # one per phase, once it trains: a refusal prints no bar

    def progress(phase: str, step: int, steps: int, loss: float) -> None:
        if phase not in bars:
            bars[phase] = tqdm(total=steps, unit="steps", desc=f"training the {phase}")
        bars[phase].update(step - bars[phase].n)
        bars[phase].set_postfix(loss=f"{loss:.3f}")

    with connect(settings.require_database()) as conn:
        try:
            done = run_finetune(
                conn, args.name, args.pairs, options, say=lambda line: print(line, flush=True),
                progress=progress,
            )  # fmt: skip
        except PairsError as exc:
            raise SettingsError(str(exc)) from None
        finally:
            for bar in bars.values():
                bar.close()
    print(f"held-out queries: {done.held_out_queries}, over {done.corpus_rows} rows")
    print(f"{'':<12} {'recall@10':>9} {'MRR@10':>7}")
    for label, figures in (("base", done.base), ("fine-tuned", done.tuned)):
        print(f"{label:<12} {figures.recall:>9.3f} {figures.mrr:>7.3f}")
    if done.rerank is not None:
        print(f"reranking the embedder's top {done.rerank.depth}:")
        for label, figures in (
            ("no rerank", done.rerank.embedder),
            ("base", done.rerank.base),
            ("fine-tuned", done.rerank.tuned),
        ):
            print(f"{label:<12} {figures.recall:>9.3f} {figures.mrr:>7.3f}")
    if done.switched_to is not None and done.switched_to.name != args.name:
        print(
            f"{args.name}: rebuilding as {done.switched_to.name} with {done.output}; searches use"
            f" {args.name} as it is until the rebuild is complete"
        )
    elif done.switched_to is not None:
        print(f"{args.name}: its rerank_model is now {done.rerank and done.rerank.output}")
    elif args.switch_if_better:
        print(f"{args.name}: not switched: the fine-tuned model is no better on the held-out pairs")
    else:
        print(f"to switch: rowembed alter {args.name} --model {done.output}")
    return 0


def _finetune_on_workers(args: argparse.Namespace, settings: Settings) -> int:
    """rowembed.finetune(), then its job's line whenever it changes, until it ends."""
    from rowembed.pgplugin import connect
    from rowembed.pgplugin.training_jobs import start_finetune, training_jobs

    if args.output or args.device:
        raise SettingsError("finetune --on-workers: the worker chooses --output and --device")
    with connect(settings.require_database()) as conn:
        try:
            job = start_finetune(
                conn, args.name, args.pairs, negatives=args.negatives, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.learning_rate,
                held_out=args.held_out, eval_rows=args.eval_rows,
                switch_if_better=args.switch_if_better, rerank=args.rerank,
                max_passage_tokens=args.max_passage_tokens, rerank_depth=args.rerank_depth,
            )  # fmt: skip
        except psycopg.Error as exc:
            raise SettingsError(_one_line(exc)) from None
        print(f"{args.name}: training job {job} started (rowembed status shows it)", flush=True)
        shown = ""
        try:
            while True:
                now = next((j for j in training_jobs(conn) if j.id == job), None)
                if now is None:
                    print(f"job {job} is gone: its vectorizer was dropped")
                    return 1
                if now.status != shown:
                    print(now.status, flush=True)
                    shown = now.status
                if now.state in ("done", "failed"):
                    return 0 if now.state == "done" else 1
                time.sleep(1.0)
        except KeyboardInterrupt:
            print(f"job {job} goes on without this command (rowembed status shows it)")
            return 130


def cmd_demo(args: argparse.Namespace) -> int:
    from rowembed.dev.demo import run_demo

    return run_demo(rows=args.rows, settings=_settings(args))


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line naming it (argparse's usage goes to --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rowembed: {message} (see {self.prog} --help)\n")


def _between(low: float, high: float, kind: type[int] | type[float] = int) -> Any:
    """An argparse type: a finite number from low to high."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= value <= high):  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is not between {low} and {high}")
        return value

    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    from rowembed.pgplugin.options import OPTIONS

    parser = _Parser(prog="rowembed", description=__doc__)
    parser.add_argument("--database-url", help="PostgreSQL URL (env ROWEMBED_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL for Celery (env ROWEMBED_REDIS_URL)")
    parser.add_argument(
        "--loglevel",
        help="INFO for worker, dispatcher and metrics; WARNING for the others (whose output is"
        " their answer: no model-load lines in it)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default), or json: one JSON object per line (env ROWEMBED_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="install or upgrade rowembed's schema and functions")
    for kind, what in (
        ("creator", "create vectorizers over the tables it owns"),
        ("worker", "work every vectorizer there is now (and, a member of its owner's role, later)"),
        ("searcher", "search every vectorizer there is now"),
    ):
        migrate.add_argument(
            f"--grant-{kind}",
            action="append",
            metavar="ROLE",
            help=f"then grant ROLE what it needs to {what} (rowembed.grant_{kind}); repeatable",
        )

    worker = sub.add_parser("worker", help="run a Celery embedding worker (and a dispatcher)")
    worker.add_argument("--concurrency", type=int, default=1, help="processes (one per GPU)")
    worker.add_argument(
        "--pool",
        choices=["prefork", "solo", "threads"],
        help="prefork (one process per GPU) when it embeds; threads for queries and reranks",
    )
    worker.add_argument(
        "--queues",
        default="embed,rerank,query",
        help="what to serve: embed, rerank, query, train, comma-separated (default embed,rerank,"
        "query; with embed, queries and reranks are served by a worker process of their own,"
        " and so is train: fine-tuning jobs)",
    )
    worker.add_argument("--name", help="Celery node name")
    worker.add_argument(
        "--no-dispatcher", action="store_true", help="do not start a dispatcher beside the worker"
    )

    sub.add_parser("dispatcher", help="turn table changes into worker hints")

    metrics = sub.add_parser("metrics", help="serve Prometheus metrics read from PostgreSQL")
    metrics.add_argument(
        "--port",
        type=_between(1, 65_535),
        help="HTTP port of /metrics (default ROWEMBED_METRICS_PORT, else 9464)",
    )
    metrics.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: the samples name tables and vectorizers;"
        " elsewhere, set ROWEMBED_METRICS_TOKEN)",
    )

    search = sub.add_parser("search", help="search a vectorizer's table with a text query")
    search.add_argument("name", help="vectorizer name")
    search.add_argument("text")
    search.add_argument("--k", type=_between(1, 10_000), default=10)
    search.add_argument("--min-similarity", type=_between(-1.0, 1.0, float), default=None)
    search.add_argument(
        "--filter",
        type=_json_object,
        help='a JSON object the row must contain, e.g. \'{"lang": "en"}\'',
    )
    search.add_argument("--rerank", action="store_true", help="rerank with the cross-encoder")
    search.add_argument(
        "--candidates", type=_between(1, 10_000), default=100, help="retrieved for --rerank"
    )
    search.add_argument(
        "--rerank-model", help="with --local; default: the vectorizer's rerank_model"
    )
    search.add_argument(
        "--local", action="store_true", help="run the models here, not on the workers"
    )
    search.add_argument("--json", action="store_true", help="one JSON object per row")
    search.add_argument(
        "--timeout",
        type=_between(0.1, 3600.0, float),
        default=15.0,
        help="seconds to wait for a worker's answer (default 15)",
    )

    sub.add_parser("status", help="queue, throughput and backfill per vectorizer")

    backfill = sub.add_parser("backfill", help="embed a vectorizer's existing rows (resumable)")
    backfill.add_argument("name", help="vectorizer name")
    backfill.add_argument("--cancel", action="store_true", help="stop a running backfill")
    backfill.add_argument("--no-wait", action="store_true", help="start it and return")

    index = sub.add_parser("index", help="show, defer or build a vectorizer's vector index")
    index.add_argument("name")
    what = index.add_mutually_exclusive_group()
    what.add_argument("--build", action="store_true", help="build a deferred index now")
    what.add_argument(
        "--defer", action="store_true", help="drop the index until the backlog drains"
    )

    calibrate = sub.add_parser(
        "calibrate", help="similarity of nearest vs random rows; suggest a threshold"
    )
    calibrate.add_argument("name", help="vectorizer name")
    calibrate.add_argument(
        "--query", action="append", help="a sample query (repeat); default: the table's own rows"
    )
    calibrate.add_argument("--sample", type=_between(1, 100_000), default=100, help="rows sampled")
    calibrate.add_argument(
        "--k", type=_between(1, 1_000), default=10, help="nearest rows per query"
    )
    calibrate.add_argument("--apply", action="store_true", help="set the suggested threshold")
    calibrate.add_argument("--local", action="store_true", help="embed queries here")

    errors = sub.add_parser("errors", help="rows whose embedding failed, with the error")
    errors.add_argument("name", nargs="?", help="vectorizer name (default: all)")

    retry = sub.add_parser("retry", help="queue a vectorizer's parked (failed) rows again")
    retry.add_argument("name", help="vectorizer name")

    bench = sub.add_parser("bench", help="throughput, database path, trigger cost, freshness")
    bench.add_argument(
        "--rows", type=int, help="docstrings embedded (2000); with --write-load, rows per table"
    )
    bench.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    bench.add_argument("--quick", action="store_true", help="fewer samples and rows")
    bench.add_argument("--json", action="store_true")
    bench.add_argument(
        "--write-load",
        action="store_true",
        help="instead: pgbench against a plain table and its vectorized twin, durable commits",
    )
    add_write_load_arguments(bench)

    alter = sub.add_parser(
        "alter", help="change a vectorizer's model or chunking, rebuilt beside it (no downtime)"
    )
    alter.add_argument("name", help="vectorizer name")
    for option in OPTIONS:  # pgplugin/options.py: the options alter_vectorizer takes
        if option.alter is not None:
            alter.add_argument(
                option.flag,
                type=option.type,
                choices=option.choices,
                help=f"{option.help} ({'rebuilds' if option.alter == 'rebuild' else 'in place'})",
            )
    alter.add_argument("--keep-old", action="store_true", help="keep the old embeddings table")
    alter.add_argument("--wait", action="store_true", help="return once switched")
    alter.add_argument("--cancel", action="store_true", help="stop a rebuild in progress")

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune a vectorizer's model on (query, key) pairs from SQL; evaluate; switch",
    )
    finetune.add_argument("name", help="vectorizer name")
    finetune.add_argument(
        "--pairs", required=True, help="one SELECT of (query text, key of a relevant source row)"
    )
    finetune.add_argument("--output", help="the new model's directory (the workers must see it)")
    finetune.add_argument(
        "--on-workers", action="store_true",
        help="train on a worker of the train queue (rowembed.finetune) and follow its progress;"
        " the model goes to its ROWEMBED_TRAINED_MODELS",
    )  # fmt: skip
    finetune.add_argument(
        "--negatives", type=_between(0, 64), default=3, help="hard negatives per pair (3)"
    )
    finetune.add_argument("--epochs", type=_between(1, 100), default=1, help="passes (1)")
    finetune.add_argument("--batch-size", type=_between(2, 4096), default=16, help="pairs (16)")
    finetune.add_argument(
        "--learning-rate", type=_between(1e-7, 1e-2, float), default=2e-5, help="(2e-5)"
    )
    finetune.add_argument(
        "--max-passage-tokens", type=_between(8, 8192), default=256,
        help="passages are cut at this many tokens while training (256): the cost per pair",
    )  # fmt: skip
    finetune.add_argument(
        "--held-out", type=_between(0.01, 0.9, float), default=0.2,
        help="share of the queries kept to evaluate (0.2)",
    )  # fmt: skip
    finetune.add_argument(
        "--eval-rows", type=_between(1, 10_000_000), default=20_000,
        help="rows the held-out queries search: their answers and a sample (20000)",
    )  # fmt: skip
    finetune.add_argument(
        "--switch-if-better", action="store_true",
        help="alter the vectorizer to the new model when it beats the current one",
    )  # fmt: skip
    finetune.add_argument(
        "--rerank", action="store_true",
        help="also fine-tune the vectorizer's rerank_model on the same pairs (saved beside the"
        " model, in OUTPUT-reranker)",
    )  # fmt: skip
    finetune.add_argument(
        "--rerank-depth", type=_between(10, 1000), default=100,
        help="the reranker is judged reordering the embedder's top this many (100)",
    )  # fmt: skip
    finetune.add_argument("--device", help="auto, cpu, cuda, cuda:N (ROWEMBED_DEVICE)")

    demo = sub.add_parser("demo", help="the whole path on embedded PostgreSQL and Redis")
    demo.add_argument("--rows", type=int, default=2000, help="docstrings to load")
    return parser


# Long-running processes: their log is their output.
SERVICES = ("worker", "dispatcher", "metrics")

COMMANDS = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "dispatcher": cmd_dispatcher,
    "metrics": cmd_metrics,
    "search": cmd_search,
    "status": cmd_status,
    "errors": cmd_errors,
    "backfill": cmd_backfill,
    "alter": cmd_alter,
    "finetune": cmd_finetune,
    "index": cmd_index,
    "calibrate": cmd_calibrate,
    "retry": cmd_retry,
    "demo": cmd_demo,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_format = args.log_format or os.environ.get("ROWEMBED_LOG_FORMAT") or "text"
    if args.log_format not in LOG_FORMATS:
        print(
            f"rowembed: ROWEMBED_LOG_FORMAT={args.log_format!r}; choose from {LOG_FORMATS}",
            file=sys.stderr,
        )
        return 2
    # The worker's pool and its dispatcher are other processes: they read the env.
    os.environ["ROWEMBED_LOG_FORMAT"] = args.log_format
    args.loglevel = args.loglevel or ("INFO" if args.command in SERVICES else "WARNING")
    configure_logging(args.loglevel, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"rowembed: {exc}", file=sys.stderr)
        return 2
    except (LookupError, RuntimeError, psycopg.Error) as exc:
        # Missing model or vectorizer, unreachable server, refused SQL: one clear line.
        print(f"rowembed: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """An error as one line: rowembed's own SQL errors (and their hint) as they
    read, others with their type."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        primary, hint = exc.diag.message_primary, exc.diag.message_hint
        if primary.startswith("rowembed: "):
            line = primary.removeprefix("rowembed: ")
        else:
            line = f"{type(exc).__name__}: {primary}"
        return f"{line} ({hint})" if hint else line
    return f"{type(exc).__name__}: {str(exc).strip()}"
