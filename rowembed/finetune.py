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
from rowembed.workers.runtime import Encoder
from rowembed.workers.runtime.retrieval import Quality, quality, top_k
from rowembed.workers.runtime.training import Example, TrainingConfig, TrainingReport, fine_tune

# Fewer pairs than this teach nothing a held-out share could show.
MIN_PAIRS = 20


@dataclass(frozen=True)
class FineTuneOptions:
    output: Path
    negatives: int = 3  # hard negatives per pair
    held_out: float = 0.2  # share of the queries kept for evaluation
    eval_rows: int = 20_000  # the evaluation corpus: the answers and a sample of the rest
    switch_if_better: bool = False
    device: str = "auto"
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def of_job(cls, job: dict[str, Any], output: Path, device: str) -> FineTuneOptions:
        """From rowembed.finetune()'s arguments, as a training job records them."""
        return cls(
            output=output,
            negatives=int(job["negatives"]),
            held_out=float(job["held_out"]),
            eval_rows=int(job["eval_rows"]),
            switch_if_better=bool(job["switch_if_better"]),
            device=device,
            training=TrainingConfig(
                epochs=int(job["epochs"]),
                batch_size=int(job["batch_size"]),
                learning_rate=float(job["learning_rate"]),
            ),
        )


@dataclass(frozen=True)
class FineTuned:
    train_pairs: int
    held_out_queries: int
    corpus_rows: int
    base: Quality
    tuned: Quality
    report: TrainingReport
    output: Path
    switched_to: Vectorizer | None  # the rebuild started, when switched

    @property
    def better(self) -> bool:
        return (self.tuned.recall, self.tuned.mrr) > (self.base.recall, self.base.mrr)

    def outcome(self) -> dict[str, Any]:
        """What a training job records (rowembed.training_job.outcome)."""
        return {
            "base": {"recall": round(self.base.recall, 3), "mrr": round(self.base.mrr, 3)},
            "tuned": {"recall": round(self.tuned.recall, 3), "mrr": round(self.tuned.mrr, 3)},
            "train_pairs": self.train_pairs,
            "held_out_queries": self.held_out_queries,
            "corpus_rows": self.corpus_rows,
            "seconds": round(self.report.seconds, 1),
            "pairs_per_second": round(self.report.pairs_per_second, 2),
            "losses": [round(x, 4) for x in self.report.losses],
        }


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
    progress: Callable[[int, int, float], None] | None = None,
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
    progress: Callable[[int, int, float], None] | None = None,
) -> FineTuned:
    """`v`'s model fine-tuned on `pairs`, evaluated on the held-out ones, and
    switched in if asked and better."""
    name = v.name
    _refuse_output(options.output)
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
        progress=progress,
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
    tuned = Encoder.load(str(options.output), device=options.device)
    figures = [_quality(e, v, answers, corpus) for e in (base, tuned)]
    result = FineTuned(
        len(train), len(answers), len(corpus), figures[0], figures[1], report, options.output, None
    )
    if options.switch_if_better and result.better:
        # The vectorizer's instructions go with it: the new model learned with them.
        next_ = alter_vectorizer(
            conn,
            name,
            model=str(options.output.resolve()),  # a name any worker's cwd reads alike
            dimensions=v.dimensions,
            query_instruction=v.query_instruction,
            passage_instruction=v.passage_instruction,
        )
        result = replace(result, switched_to=next_)
    return result


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


def _quality(
    encoder: Encoder, v: Vectorizer, answers: dict[str, set[str]], corpus: dict[str, str]
) -> Quality:
    keys = list(corpus)
    index = {key: i for i, key in enumerate(keys)}
    documents = encoder.encode([corpus[k] for k in keys]).vectors
    queries = encoder.encode([v.query_instruction + q for q in answers]).vectors
    relevant = [{index[k] for k in keys_ if k in index} for keys_ in answers.values()]
    return quality(top_k(queries, documents, 10), relevant, 10)
