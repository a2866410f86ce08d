"""`rowembed finetune`: a vectorizer's model fine-tuned on (query, key) pairs
from SQL, with hard negatives from its own index, evaluated on held-out pairs
against the model it has, and switched in through alter_vectorizer (no
downtime) when asked and better."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from rowembed.pgplugin import Vectorizer, alter_vectorizer, get_vectorizer
from rowembed.pgplugin.finetune import (
    Pair,
    PairsError,
    mine_negatives,
    read_pairs,
    sample_keys,
    texts_of,
)
from rowembed.workers.runtime import Encoder, Reranker
from rowembed.workers.runtime.retrieval import Quality, quality, top_k
from rowembed.workers.runtime.training import (
    Example,
    TrainingConfig,
    TrainingReport,
    fine_tune,
    fine_tune_reranker,
)

# Fewer pairs than this teach nothing a held-out share could show.
MIN_PAIRS = 20

# progress(phase, step, steps, loss) after each optimizer step; phase: what
# trains, "model" or "reranker".
Progress = Callable[[str, int, int, float], None]


def _in_phase(progress: Progress | None, phase: str) -> Callable[[int, int, float], None] | None:
    if progress is None:
        return None
    return lambda step, steps, loss: progress(phase, step, steps, loss)


@dataclass(frozen=True)
class FineTuneOptions:
    output: Path
    negatives: int = 3  # hard negatives per pair
    held_out: float = 0.2  # share of the queries kept for evaluation
    eval_rows: int = 20_000  # the evaluation corpus: the answers and a sample of the rest
    switch_if_better: bool = False
    device: str = "auto"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rerank_output: Path | None = None  # also fine-tune the vectorizer's rerank_model, here
    rerank_depth: int = 100  # the reranker is judged on the embedder's top this many

    @classmethod
    def of_job(cls, job: dict[str, Any], output: Path, device: str) -> FineTuneOptions:
        """From rowembed.finetune()'s arguments, as a training job records them;
        the reranker (if asked) beside the model."""
        return cls(
            output=output,
            rerank_output=reranker_directory(output) if job["rerank"] else None,
            rerank_depth=int(job["rerank_depth"]),
            negatives=int(job["negatives"]),
            held_out=float(job["held_out"]),
            eval_rows=int(job["eval_rows"]),
            switch_if_better=bool(job["switch_if_better"]),
            device=device,
            training=TrainingConfig(
                epochs=int(job["epochs"]),
                batch_size=int(job["batch_size"]),
                learning_rate=float(job["learning_rate"]),
                max_passage_tokens=int(job["max_passage_tokens"]),
            ),
        )


@dataclass(frozen=True)
class RerankTuned:
    """The reranker fine-tuned on the same pairs and negatives, judged by how it
    orders the embedder's top `depth` for the held-out queries."""

    embedder: Quality  # those candidates in the embedder's order
    base: Quality
    tuned: Quality
    depth: int
    report: TrainingReport
    output: Path

    @property
    def better(self) -> bool:
        return _better(self.base, self.tuned)


@dataclass(frozen=True)
class FineTuned:
    train_pairs: int
    held_out_queries: int
    corpus_rows: int
    base: Quality
    tuned: Quality
    report: TrainingReport
    output: Path
    switched_to: Vectorizer | None  # the rebuild started (or v itself: the reranker alone)
    rerank: RerankTuned | None = None

    @property
    def better(self) -> bool:
        return _better(self.base, self.tuned)

    def outcome(self) -> dict[str, Any]:
        """What a training job records (rowembed.training_job.outcome)."""
        recorded: dict[str, Any] = {
            "base": _figures(self.base),
            "tuned": _figures(self.tuned),
            "train_pairs": self.train_pairs,
            "held_out_queries": self.held_out_queries,
            "corpus_rows": self.corpus_rows,
            "seconds": round(self.report.seconds, 1),
            "pairs_per_second": round(self.report.pairs_per_second, 2),
            "losses": [round(x, 4) for x in self.report.losses],
        }
        if self.rerank is not None:
            recorded["rerank"] = {
                "depth": self.rerank.depth,
                "embedder": _figures(self.rerank.embedder),
                "base": _figures(self.rerank.base),
                "tuned": _figures(self.rerank.tuned),
                "model": str(self.rerank.output),
                "seconds": round(self.rerank.report.seconds, 1),
            }
        return recorded


def _better(base: Quality, tuned: Quality) -> bool:
    return (tuned.recall, tuned.mrr) > (base.recall, base.mrr)


def _figures(q: Quality) -> dict[str, float]:
    return {"recall": round(q.recall, 3), "mrr": round(q.mrr, 3)}


def reranker_directory(output: Path) -> Path:
    """Where a fine-tuned reranker goes: beside the model, OUTPUT-reranker."""
    return output.with_name(output.name + "-reranker")


def held_out(pair: Pair, share: float) -> bool:
    """By the query's text: the same split on every run, no query on both sides."""
    digest = hashlib.md5(pair.query.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def run_finetune(
    conn: psycopg.Connection[Any],
    name: str,
    pairs_sql: str,
    options: FineTuneOptions,
    say: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> FineTuned:
    """Fine-tune vectorizer `name`'s model on the pairs the SELECT `pairs_sql` gives."""
    v = get_vectorizer(conn, name)
    _refuse_output(options.output)
    if v.index_method == "none":
        raise PairsError(f"{name} has no vector index (index_method none) to mine negatives from")
    pairs = read_pairs(conn, v, pairs_sql)
    return fine_tune_vectorizer(conn, v, pairs, options, say, progress)


def fine_tune_vectorizer(
    conn: psycopg.Connection[Any],
    v: Vectorizer,
    pairs: Sequence[Pair],
    options: FineTuneOptions,
    say: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> FineTuned:
    """`v`'s model fine-tuned on `pairs`, evaluated on the held-out ones, and
    switched in if asked and better."""
    name = v.name
    _refuse_output(options.output)
    if options.rerank_output is not None:
        if not v.rerank_model:
            raise PairsError(f"{name} has no rerank_model to fine-tune")
        _refuse_output(options.rerank_output)
    train = [p for p in pairs if not held_out(p, options.held_out)]
    evaluate = [p for p in pairs if held_out(p, options.held_out)]
    if len(pairs) < MIN_PAIRS or not train or not evaluate:
        raise PairsError(
            f"{len(pairs)} pairs ({len(train)} to train, {len(evaluate)} held out): fine-tuning"
            f" needs at least {MIN_PAIRS}, with queries on both sides of the split"
        )
    base = Encoder.load(v.model, device=options.device)
    answers = _answers(evaluate)
    say(
        f"{name}: {len(train)} pairs to train on, {len(answers)} held-out queries;"
        f" {options.negatives} hard negatives per pair from ranks 3-200 of its index"
    )
    texts = texts_of(conn, v, sorted({p.key for p in pairs}))
    train = [p for p in train if p.key in texts]  # a row with no text teaches nothing
    examples = _examples(conn, v, base, train, texts, options)
    report = fine_tune(
        v.model, examples, options.output, options.training, device=options.device,
        progress=_in_phase(progress, "model"),
    )  # fmt: skip
    say(
        f"trained on {report.examples} pairs in {report.seconds:.1f} s"
        f" ({report.pairs_per_second:.1f} pairs/s); saved to {options.output}"
    )
    corpus_keys = sorted(
        {k for keys in answers.values() for k in keys}
        | set(sample_keys(conn, v, options.eval_rows, options.training.seed))
    )
    corpus = texts_of(conn, v, corpus_keys)
    evaluation = _Evaluation(v, answers, corpus, max(10, options.rerank_depth))
    tuned = Encoder.load(str(options.output), device=options.device)
    ranked = [evaluation.rank(e) for e in (base, tuned)]
    figures = [evaluation.quality(r) for r in ranked]
    result = FineTuned(
        len(train), len(answers), len(corpus), figures[0], figures[1], report, options.output, None
    )
    if options.rerank_output is not None:
        # On the candidates of the embedder the vectorizer will use.
        candidates = ranked[1] if result.better else ranked[0]
        result = replace(
            result,
            rerank=_fine_tune_reranker(v, examples, evaluation, candidates, options, progress),
        )
    if options.switch_if_better:
        result = _switch(conn, v, result)
    return result


def _switch(conn: psycopg.Connection[Any], v: Vectorizer, result: FineTuned) -> FineTuned:
    """alter_vectorizer to what came out better: the model (a rebuild), the
    reranker (in place, or with the rebuild)."""
    changes: dict[str, Any] = {}
    if result.better:
        # The vectorizer's instructions go with it: the new model learned with them.
        changes.update(
            model=str(result.output.resolve()),  # a name any worker's cwd reads alike
            dimensions=v.dimensions,
            query_instruction=v.query_instruction,
            passage_instruction=v.passage_instruction,
        )
    if result.rerank is not None and result.rerank.better:
        changes["rerank_model"] = str(result.rerank.output.resolve())
    if not changes:
        return result
    return replace(result, switched_to=alter_vectorizer(conn, v.name, **changes))


def _fine_tune_reranker(
    v: Vectorizer,
    examples: Sequence[Example],
    evaluation: _Evaluation,
    candidates: np.ndarray,
    options: FineTuneOptions,
    progress: Progress | None,
) -> RerankTuned:
    """The rerank model trained on the same pairs and negatives, as rowembed.rerank
    scores them: the query without its instruction, the row's text."""
    assert options.rerank_output is not None
    plain = [
        Example(
            e.query.removeprefix(v.query_instruction),
            e.positive.removeprefix(v.passage_instruction),
            tuple(n.removeprefix(v.passage_instruction) for n in e.negatives),
        )
        for e in examples
    ]
    report = fine_tune_reranker(
        v.rerank_model, plain, options.rerank_output, options.training, device=options.device,
        progress=_in_phase(progress, "reranker"),
    )  # fmt: skip
    figures = [
        evaluation.quality(
            evaluation.rerank(Reranker.load(model, device=options.device), candidates)
        )
        for model in (v.rerank_model, str(options.rerank_output))
    ]
    depth = candidates.shape[1]
    return RerankTuned(
        evaluation.quality(candidates), figures[0], figures[1], depth, report,
        options.rerank_output,
    )  # fmt: skip


def _refuse_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        # It may hold a model a vectorizer uses: its files must not change under it.
        raise PairsError(f"{output} is not empty: give the new model a new directory")


def _answers(pairs: Sequence[Pair]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        grouped[p.query].add(p.key)
    return dict(grouped)


def _examples(
    conn: psycopg.Connection[Any],
    v: Vectorizer,
    base: Encoder,
    train: Sequence[Pair],
    texts: dict[str, str],
    options: FineTuneOptions,
) -> list[Example]:
    positives = _answers(train)
    vectors = base.encode([v.query_instruction + p.query for p in train]).vectors
    mined = mine_negatives(
        conn, v, vectors, [positives[p.query] for p in train],
        count=options.negatives, seed=options.training.seed,
    )  # fmt: skip
    negative_texts = texts_of(conn, v, sorted({k for keys in mined for k in keys}))
    return [
        Example(
            v.query_instruction + p.query,
            texts[p.key],
            tuple(negative_texts[k] for k in keys if k in negative_texts),
        )
        for p, keys in zip(train, mined, strict=True)
    ]


class _Evaluation:
    """The held-out queries over the evaluation corpus: ranked by an encoder (to
    `depth`), reordered by a reranker, scored at 10."""

    def __init__(
        self, v: Vectorizer, answers: dict[str, set[str]], corpus: dict[str, str], depth: int
    ) -> None:
        self.v, self.depth = v, depth
        self.keys = list(corpus)
        self.texts = [corpus[k] for k in self.keys]
        index = {key: i for i, key in enumerate(self.keys)}
        self.queries = list(answers)
        self.relevant = [{index[k] for k in keys if k in index} for keys in answers.values()]

    def rank(self, encoder: Encoder) -> np.ndarray:
        documents = encoder.encode(self.texts).vectors
        queries = encoder.encode([self.v.query_instruction + q for q in self.queries]).vectors
        return top_k(queries, documents, self.depth)

    def rerank(self, reranker: Reranker, ranked: np.ndarray) -> np.ndarray:
        passages = [t.removeprefix(self.v.passage_instruction) for t in self.texts]
        reordered = []
        for query, row in zip(self.queries, ranked, strict=True):
            scores = reranker.score(query, [passages[i] for i in row]).scores
            reordered.append(row[np.argsort(-scores, kind="stable")])
        return np.array(reordered)

    def quality(self, ranked: np.ndarray) -> Quality:
        return quality(ranked[:, :10], self.relevant, 10)
