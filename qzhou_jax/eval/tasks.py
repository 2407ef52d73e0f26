"""Local evaluation tasks over the shared public data (`qzhou_jax.data.shared_data`), scored as MTEB scores them.

    from qzhou_jax.eval.tasks import get_tasks
    for task in get_tasks("STSBenchmark,SciFact"):
        print(task.name, task.run(encoder, max_examples=200)["main_score"])

| task                    | type               | eval split (others)       | main score      | prompted      |
|-------------------------|--------------------|---------------------------|-----------------|---------------|
| STSBenchmark            | STS                | test (dev, train)         | cosine_spearman | both sides    |
| SICK-R                  | STS                | test (dev = trial, train) | cosine_spearman | both sides    |
| ATEC, LCQMC             | STS (0/1 gold)     | test (dev)                | cosine_spearman | both sides    |
| Ocnli                   | PairClassification | dev (train)               | cosine_ap       | both sides    |
| SciFact                 | Retrieval          | test (train)              | ndcg_at_10      | queries only  |
| Banking77Classification | Classification     | test                      | accuracy        | all texts     |
| TRECClassification      | Classification     | test                      | accuracy        | all texts     |
| SST2Classification      | Classification     | test (dev)                | accuracy        | all texts     |
| Waimai                  | Classification     | test (dev); seeded split  | accuracy        | all texts     |
| Banking77Clustering     | Clustering         | test (train)              | v_measure       | all texts     |
| TrecQAReranking         | Reranking          | test (dev)                | map             | questions only|

Prompt sides follow docs/recipe.md section 1 / QZhou's eval scripts: symmetric tasks (STS, pair classification,
classification, clustering) prompt every text with the task instruction; retrieval prompts only the queries.
TrecQA answer selection is asymmetric (question -> answer sentence, trained as retrieval), so only its questions
are prompted. Instructions come from `qzhou_jax.instructions`: DEFAULT_INSTRUCTIONS (QZhou's own where published),
plus EXTRA_INSTRUCTIONS for the two tasks MTEB lacks; `get_tasks(..., instructions=)` overrides them ({task:
instruction}, null = no prompt; names of tasks not registered here are ignored, so QZhou's full table can be used).

Choices of ours, made explicit:
  * Ocnli: entailment (label 2) vs not (neutral and contradiction), AP of the cosine; "-" pairs are dropped.
  * Waimai has no official split: a fixed permutation (RandomState(WAIMAI_SEED)) of the 11,987 reviews gives test =
    the first 2,000, dev = the next 1,000, train = the rest. It never changes, so scores stay comparable.
  * Classification: MTEB's logistic-regression protocol (metrics.classification_metrics: 10 experiments x 8
    training texts per label). Only the training texts those experiments draw are encoded.
  * `max_examples` (0 = all) keeps a deterministic random subset (RandomState(SUBSAMPLE_SEED)) for fast evaluation
    during training: pairs (STS/pair classification, every class kept when possible), judged queries (retrieval;
    the corpus is cut to their judged documents plus random others, MAX_CORPUS_PER_QUERY per kept query),
    test and training texts (classification), texts (clustering), questions (reranking). Scores on a subset are
    for trends, not for comparison with full-set numbers.
Every task returns {metric: float} with `main_score` = its MTEB main metric and `n_examples`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from qzhou_jax.data import shared_data
from qzhou_jax.eval import TextEncoder, metrics
from qzhou_jax.eval.mteb_adapter import load_instructions
from qzhou_jax.instructions import DEFAULT_INSTRUCTIONS, EXTRA_INSTRUCTIONS

MAIN_METRICS = {
    "STS": "cosine_spearman", "PairClassification": "cosine_ap", "Retrieval": "ndcg_at_10",
    "Classification": "accuracy", "Clustering": "v_measure", "Reranking": "map",
}
# The few metrics per type worth a curve during training (the JSON of the evaluate CLI keeps all of them).
SUMMARY_METRICS = {
    "STS": ("cosine_spearman", "cosine_pearson"),
    "PairClassification": ("cosine_ap", "cosine_f1", "cosine_accuracy"),
    "Retrieval": ("ndcg_at_10", "recall_at_100", "mrr_at_10"),
    "Classification": ("accuracy", "f1"),
    "Clustering": ("v_measure",),
    "Reranking": ("map", "mrr_at_10"),
}
SUBSAMPLE_SEED = 42
WAIMAI_SEED = 42
WAIMAI_SIZES = {"test": 2000, "dev": 1000}  # the rest is train
MAX_CORPUS_PER_QUERY = 20

_CACHE: dict[tuple, Any] = {}


def subsample(n: int, max_examples: int, *, labels: Sequence[Any] | None = None,
              seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Ascending indices of a deterministic random subset of min(n, max_examples) items (0 = all of them).

    With `labels`, the first item of every class in the permutation is kept first (so both classes of a binary
    task survive whenever max_examples allows), then the permutation fills the rest.
    """
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 (0 = all), got {max_examples}")
    if max_examples == 0 or max_examples >= n:
        return np.arange(n)
    perm = np.random.RandomState(seed).permutation(n)
    if labels is None:
        return np.sort(perm[:max_examples])
    _, first = np.unique(np.asarray(labels)[perm], return_index=True)  # positions in perm
    first = np.sort(first)[:max_examples]
    rest = np.setdiff1d(np.arange(n), first)[: max_examples - len(first)]
    return np.sort(perm[np.concatenate([first, rest])])


def encode_texts(encoder: TextEncoder, texts: Sequence[str], instruction: str | None) -> np.ndarray:
    """[len(texts), D] float32; each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        raise ValueError("nothing to encode")
    emb = np.asarray(encoder.encode(unique, instruction=instruction), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(unique):
        raise ValueError(f"{type(encoder).__name__}.encode returned shape {emb.shape} for {len(unique)} texts")
    row = {t: i for i, t in enumerate(unique)}
    return emb[[row[t] for t in texts]]


@contextlib.contextmanager
def _small_sklearn_problem():
    """One BLAS thread for the small scikit-learn fits: on a loaded host (JAX threads, other jobs) OpenBLAS's
    thread pool makes a 50-text logistic regression 30x slower, not faster. Also silences the warning
    sklearn gives when a subsample leaves few texts per class."""
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        yield


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    """Raw data per (data dir, task, split): read once per process (evaluation during training repeats)."""
    key = (str(shared_data.data_dir()),) + key
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


# ================================================================================================= tasks
@dataclasses.dataclass(frozen=True)
class Task:
    """One local task. `splits` maps our split names to the reader's; `eval_split` is MTEB's evaluation split."""

    name: str
    type: str
    splits: Mapping[str, str]
    eval_split: str
    instruction: str | None
    both_sides: bool = True

    @property
    def main_metric(self) -> str:
        return MAIN_METRICS[self.type]

    def with_instruction(self, instruction: str | None) -> "Task":
        return dataclasses.replace(self, instruction=instruction or None)

    def resolve_split(self, split: str | None) -> str:
        split = split or self.eval_split
        if split not in self.splits:
            raise ValueError(f"{self.name}: no split {split!r}; available: {sorted(self.splits)}")
        return split

    def query_instruction(self) -> str | None:
        return self.instruction

    def document_instruction(self) -> str | None:
        return self.instruction if self.both_sides else None

    def run(self, encoder: TextEncoder, split: str | None = None, max_examples: int = 0) -> dict[str, float]:
        """Encodes the split's texts with `encoder` and scores them -> {metric: float, ..., "main_score": ...}."""
        split = self.resolve_split(split)
        if max_examples < 0:
            raise ValueError(f"max_examples must be >= 0 (0 = all), got {max_examples}")
        scores = self._evaluate(encoder, split, int(max_examples))
        out = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float, np.integer, np.floating))}
        out["main_score"] = out[self.main_metric]
        return out

    def _evaluate(self, encoder: TextEncoder, split: str, max_examples: int) -> dict[str, Any]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class PairTask(Task):
    """STS (cosine vs gold score, Spearman) or pair classification (cosine AP, `positive` decides the label)."""

    read: Callable[[str], list] = None
    positive: Callable[[float], bool] | None = None  # pair classification only

    def pairs(self, split: str) -> tuple[list[str], list[str], np.ndarray]:
        samples = _cached((self.name, split), lambda: self.read(self.splits[split]))
        gold = np.array([s.score for s in samples], dtype=np.float64)
        if self.positive is not None:
            gold = np.array([int(self.positive(g)) for g in gold])
        return [s.text_a for s in samples], [s.text_b for s in samples], gold

    def examples(self, split: str, max_examples: int = 0) -> tuple[list[str], list[str], np.ndarray]:
        """The pairs `run` scores: the split, cut to the `max_examples` subset (also fed to mteb: eval/mteb_local)."""
        a, b, gold = self.pairs(split)
        keep = subsample(len(gold), max_examples, labels=gold if self.positive is not None else None)
        return [a[i] for i in keep], [b[i] for i in keep], gold[keep]

    def _evaluate(self, encoder, split, max_examples):
        a, b, gold = self.examples(split, max_examples)
        emb = encode_texts(encoder, a + b, self.query_instruction())  # symmetric: one instruction for both
        emb_a, emb_b = emb[: len(a)], emb[len(a):]
        if self.positive is None:
            scores = metrics.sts_metrics(emb_a, emb_b, gold)
        else:
            scores = metrics.pair_classification_metrics(emb_a, emb_b, gold)
        return {f"cosine_{k}": v for k, v in scores.items()} | {"n_examples": len(gold)}


@dataclasses.dataclass(frozen=True)
class RetrievalTask(Task):
    """BEIR retrieval: exact cosine top-k over the corpus, pytrec_eval-style metrics (MTEB's k values)."""

    read: Callable[[str], Any] = None
    top_k: int = 1000

    def examples(self, split: str, max_examples: int = 0) -> tuple[dict, dict, dict]:
        """(corpus, queries, qrels) as `run` scores them, each cut to the `max_examples` subset, in scoring order."""
        corpus, queries, qrels = _cached((self.name, split), lambda: self.read(self.splits[split]))
        query_ids = sorted(qrels, key=_natural)
        query_ids = [query_ids[i] for i in subsample(len(query_ids), max_examples)]
        doc_ids = list(corpus)
        if max_examples:
            judged = {d for q in query_ids for d in qrels[q]}
            others = [d for d in doc_ids if d not in judged]
            n_others = max(0, max_examples * MAX_CORPUS_PER_QUERY - len(judged))
            kept = judged | {others[i] for i in subsample(len(others), n_others)} if n_others else judged
            doc_ids = [d for d in doc_ids if d in kept]
        missing = [q for q in query_ids if q not in queries]
        if missing:
            raise ValueError(f"{self.name}/{split}: qrels name query {missing[0]!r}, absent from queries.jsonl")
        return ({d: corpus[d] for d in doc_ids}, {q: queries[q] for q in query_ids},
                {q: qrels[q] for q in query_ids})

    def _evaluate(self, encoder, split, max_examples):
        corpus, queries, qrels = self.examples(split, max_examples)
        query_ids, doc_ids = list(queries), list(corpus)
        q_emb = encode_texts(encoder, list(queries.values()), self.query_instruction())
        d_emb = encode_texts(encoder, list(corpus.values()), self.document_instruction())
        from qzhou_jax.eval.search import exact_search  # local: JAX only when retrieval runs

        run = exact_search(q_emb, d_emb, query_ids, doc_ids, k=self.top_k)
        scores = metrics.retrieval_metrics(run, qrels)
        return scores | {"n_examples": len(query_ids), "n_corpus": len(doc_ids)}


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
    """MTEB logistic-regression classification: fit on (undersampled) train embeddings, score the eval split."""

    read: Callable[[str], list] = None
    train_split: str = "train"
    n_experiments: int = 10
    samples_per_label: int = 8

    def examples(self, split: str, max_examples: int = 0) -> tuple[list, list]:
        """(train, test) samples as `run` sees them, each cut to the `max_examples` subset."""
        train = _cached((self.name, self.train_split), lambda: self.read(self.train_split))
        test = _cached((self.name, split), lambda: self.read(self.splits[split]))
        train = [train[i] for i in subsample(len(train), max_examples, labels=[s.label for s in train])]
        test = [test[i] for i in subsample(len(test), max_examples, labels=[s.label for s in test])]
        return train, test

    def _evaluate(self, encoder, split, max_examples):
        train, test = self.examples(split, max_examples)
        y_train = [s.label for s in train]
        # The experiments only ever fit on the texts `undersample` draws: encode those, leave the rest at zero.
        idxs, drawn = None, set()
        for _ in range(self.n_experiments):
            idxs, selected = metrics.undersample(y_train, self.samples_per_label, idxs, SUBSAMPLE_SEED)
            drawn.update(selected)
        drawn = sorted(drawn)
        emb = encode_texts(encoder, [train[i].text for i in drawn] + [s.text for s in test], self.query_instruction())
        train_emb = np.zeros((len(train), emb.shape[1]), np.float32)
        train_emb[drawn] = emb[: len(drawn)]
        with _small_sklearn_problem():
            scores = metrics.classification_metrics(
                train_emb, y_train, emb[len(drawn):], [s.label for s in test], n_experiments=self.n_experiments,
                samples_per_label=self.samples_per_label, seed=SUBSAMPLE_SEED)
        return scores | {"n_examples": len(test), "n_train_encoded": len(drawn)}


@dataclasses.dataclass(frozen=True)
class ClusteringTask(Task):
    """MTEB clustering: k-means with k = number of labels over the embeddings, V-measure against the labels."""

    read: Callable[[str], list] = None

    def _evaluate(self, encoder, split, max_examples):
        samples = _cached((self.name, split), lambda: self.read(self.splits[split]))
        samples = [samples[i] for i in subsample(len(samples), max_examples, labels=[s.label for s in samples])]
        emb = encode_texts(encoder, [s.text for s in samples], self.query_instruction())
        with _small_sklearn_problem():
            scores = metrics.clustering_metrics(emb, [s.label for s in samples], seed=SUBSAMPLE_SEED)
        return scores | {"n_examples": len(samples)}


@dataclasses.dataclass(frozen=True)
class RerankingTask(Task):
    """MTEB reranking: each question's candidates ranked by cosine; MAP and MRR@10 over questions that have both a
    correct and a wrong candidate (the others cannot be ranked; counted in n_skipped)."""

    read: Callable[[str], list] = None

    def _evaluate(self, encoder, split, max_examples):
        groups = _cached((self.name, split), lambda: self.read(self.splits[split]))
        usable = [g for g in groups if g.positives and g.negatives]
        usable = [usable[i] for i in subsample(len(usable), max_examples)]
        q_emb = encode_texts(encoder, [g.question for g in usable], self.query_instruction())
        cands = [list(g.positives) + list(g.negatives) for g in usable]
        flat = encode_texts(encoder, [c for group in cands for c in group], self.document_instruction())
        bounds = np.cumsum([0] + [len(c) for c in cands])
        scores = metrics.reranking_metrics(
            list(q_emb), [flat[s:e] for s, e in zip(bounds[:-1], bounds[1:])],
            [[True] * len(g.positives) + [False] * len(g.negatives) for g in usable])
        return scores | {"n_examples": len(usable), "n_skipped": len(groups) - len(usable)}


# ============================================================================================== readers
def _natural(key: str):
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def _read_waimai(split: str) -> list:
    """The fixed seeded split of Waimai (see the module docstring)."""
    if split not in ("train", "dev", "test"):
        raise ValueError(f"Waimai: unknown split {split!r}; available: ['dev', 'test', 'train']")
    samples = shared_data.read_classification("waimai", "all")
    perm = np.random.RandomState(WAIMAI_SEED).permutation(len(samples))
    n_test, n_dev = WAIMAI_SIZES["test"], WAIMAI_SIZES["dev"]
    part = {"test": perm[:n_test], "dev": perm[n_test:n_test + n_dev], "train": perm[n_test + n_dev:]}[split]
    return [samples[i] for i in np.sort(part)]


def _reader(fn: Callable, dataset: str) -> Callable[[str], Any]:
    return lambda split: fn(dataset, split)


def _instruction(name: str) -> str:
    return {**DEFAULT_INSTRUCTIONS, **EXTRA_INSTRUCTIONS}[name]


def _sts(name: str, dataset: str, splits: dict[str, str]) -> PairTask:
    return PairTask(name, "STS", splits, "test", _instruction(name), read=_reader(shared_data.read_sts, dataset))


def _cls(name: str, read: Callable[[str], list], splits: dict[str, str]) -> ClassificationTask:
    return ClassificationTask(name, "Classification", splits, "test", _instruction(name), read=read)


_TASK_LIST: list[Task] = [
    _sts("STSBenchmark", "stsb", {"train": "train", "dev": "dev", "test": "test"}),
    _sts("SICK-R", "sickr", {"train": "train", "dev": "trial", "test": "test"}),
    _sts("ATEC", "atec", {"dev": "valid", "test": "test"}),
    _sts("LCQMC", "lcqmc", {"dev": "dev", "test": "test"}),
    PairTask("Ocnli", "PairClassification", {"train": "train", "dev": "dev"}, "dev", _instruction("Ocnli"),
             read=_reader(shared_data.read_nli, "ocnli"), positive=lambda score: score == 2.0),
    RetrievalTask("SciFact", "Retrieval", {"train": "train", "test": "test"}, "test", _instruction("SciFact"),
                  both_sides=False, read=_reader(shared_data.read_beir, "scifact")),
    _cls("Banking77Classification", _reader(shared_data.read_classification, "banking77"), {"test": "test"}),
    _cls("TRECClassification", _reader(shared_data.read_classification, "trec"), {"test": "test"}),
    _cls("SST2Classification", _reader(shared_data.read_classification, "sst2"), {"dev": "dev", "test": "test"}),
    _cls("Waimai", _read_waimai, {"dev": "dev", "test": "test"}),
    ClusteringTask("Banking77Clustering", "Clustering", {"train": "train", "test": "test"}, "test",
                   _instruction("Banking77Clustering"), read=_reader(shared_data.read_classification, "banking77")),
    RerankingTask("TrecQAReranking", "Reranking", {"dev": "dev", "test": "test"}, "test",
                  _instruction("TrecQAReranking"), both_sides=False,
                  read=_reader(shared_data.read_answer_selection, "trecqa")),
]
TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}


def get_task(name: str, instructions: Mapping[str, str | None] | None = None) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; local tasks: {', '.join(TASKS)}")
    task = TASKS[name]
    if instructions is not None and name in instructions:
        task = task.with_instruction(instructions[name])
    return task


def get_tasks(names: str | Sequence[str] = "all",
              instructions: Mapping[str, str | None] | str | os.PathLike | None = None) -> list[Task]:
    """Tasks by name: a comma-separated string or a sequence; "all" = every local task, in registry order.

    `instructions`: {task: instruction or None}, or the path of such a JSON file (mteb_adapter.load_instructions).
    """
    if isinstance(instructions, (str, os.PathLike)):
        instructions = load_instructions(Path(instructions))
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if names == ["all"]:
        names = list(TASKS)
    if not names:
        raise ValueError("no tasks given")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"tasks listed twice: {sorted(duplicates)}")
    return [get_task(n, instructions) for n in names]


def task_texts(task: Task, split: str) -> list[str]:
    """The texts of one split of a local evaluation task."""
    raw = task.read(task.splits[split])
    if isinstance(task, PairTask):
        return [t for s in raw for t in (s.text_a, s.text_b)]
    if isinstance(task, RetrievalTask):
        corpus, queries, qrels = raw
        return [queries[q] for q in qrels if q in queries] + [corpus[d] for q in qrels for d in qrels[q]
                                                            if d in corpus]
    if isinstance(task, RerankingTask):
        return [t for g in raw for t in (g.question, *g.positives, *g.negatives)]
    return [s.text for s in raw]  # classification, clustering


def evaluation_texts(names: str = "all") -> Iterator[tuple[str, list[str]]]:
    """("<task>/<split>", texts) for every non-train split of the named tasks ("all" or a comma list): what training
    data must not contain (data/contamination.py matches against them)."""
    for task in get_tasks(names):
        for split in task.splits:
            if split != "train":
                yield f"{task.name}/{split}", task_texts(task, split)

