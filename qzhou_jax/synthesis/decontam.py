"""Decontamination: drop samples whose query or positive matches an evaluation text.

A text matches when (a) its normalised form (checks.normalise: NFKC, case-folded, punctuation and whitespace
removed) equals an evaluation text's, or (b) it shares one token 13-gram (NGRAM; tokens as in checks.tokens: words,
CJK characters) with any evaluation text. Texts shorter than 13 tokens can only match exactly.

Evaluation texts: every non-train split of the local evaluation tasks (qzhou_jax/eval/tasks.py; for retrieval, the
queries and judged documents of those splits; the shared corpus itself is not evaluation text) and any files the
user names (JSONL: every string in fields query/pos/neg/text/sentence1/sentence2, or plain text: one per line).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.synthesis import checks

log = logging.getLogger(__name__)

NGRAM = 13
_FILE_FIELDS = ("query", "pos", "neg", "text", "sentence1", "sentence2", "question", "answer")


def _hash(gram: Sequence[str]) -> bytes:
    return hashlib.blake2b("\x1f".join(gram).encode(), digest_size=8).digest()


class Decontaminator:
    def __init__(self, texts: Iterable[str] = (), n: int = NGRAM):
        self.n = n
        self.exact: set[str] = set()
        self.ngrams: set[bytes] = set()
        self.sources: list[str] = []
        self.add(texts)

    def add(self, texts: Iterable[str], source: str | None = None) -> None:
        for text in texts:
            toks = checks.tokens(text)
            if not toks:
                continue
            self.exact.add(" ".join(toks))
            for i in range(len(toks) - self.n + 1):
                self.ngrams.add(_hash(toks[i:i + self.n]))
        if source:
            self.sources.append(source)

    def match(self, text: str) -> str | None:
        """None, or why `text` is contaminated: "exact" or "ngram"."""
        toks = checks.tokens(text)
        if " ".join(toks) in self.exact:
            return "exact"
        if any(_hash(toks[i:i + self.n]) in self.ngrams for i in range(len(toks) - self.n + 1)):
            return "ngram"
        return None

    def match_row(self, row: dict) -> str | None:
        """A FlagEmbedding row is contaminated when its query or any positive matches."""
        for text in [row.get("query", "")] + list(row.get("pos") or []):
            reason = self.match(text)
            if reason:
                return reason
        return None

    def __bool__(self) -> bool:
        return bool(self.exact)


def task_texts(task, split: str) -> list[str]:
    """The texts of one split of a local evaluation task."""
    from qzhou_jax.eval import tasks as eval_tasks

    raw = task.read(task.splits[split])
    if isinstance(task, eval_tasks.PairTask):
        return [t for s in raw for t in (s.text_a, s.text_b)]
    if isinstance(task, eval_tasks.RetrievalTask):
        corpus, queries, qrels = raw
        return [queries[q] for q in qrels if q in queries] + [corpus[d] for q in qrels for d in qrels[q]
                                                            if d in corpus]
    if isinstance(task, eval_tasks.RerankingTask):
        return [t for g in raw for t in (g.question, *g.positives, *g.negatives)]
    return [s.text for s in raw]  # classification, clustering


def from_eval_tasks(names: str = "all", decontaminator: Decontaminator | None = None) -> Decontaminator:
    """Adds every non-train split of the named local tasks ("all", or a comma-separated list)."""
    from qzhou_jax.eval.tasks import get_tasks

    d = decontaminator or Decontaminator()
    for task in get_tasks(names):
        for split in task.splits:
            if split != "train":
                d.add(task_texts(task, split), f"{task.name}/{split}")
    return d


def read_text_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (decontamination file)")
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                texts.append(line.rstrip("\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{number}: malformed JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{number}: expected a JSON object")
            for field in _FILE_FIELDS:
                value = record.get(field)
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, str):
                        texts.append(v)
    return texts


def build(tasks: str = "all", files: Sequence[str] = ()) -> Decontaminator:
    d = from_eval_tasks(tasks) if tasks and tasks != "none" else Decontaminator()
    for path in files:
        d.add(read_text_file(path), str(path))
    log.info("decontamination: %d texts, %d %d-grams from %d sources", len(d.exact), len(d.ngrams), d.n,
             len(d.sources))
    return d


def filter_rows(rows: Iterable[dict], d: Decontaminator, counts: dict) -> list[dict]:
    """Rows without the contaminated ones; counts[reason] += 1 for each dropped."""
    kept = []
    for row in rows:
        reason = d.match_row(row)
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
        else:
            kept.append(row)
    return kept


def decontaminate_file(input_path: str, output_path: str, d: Decontaminator) -> dict:
    """Any FlagEmbedding JSONL (training data too) -> the same rows minus contaminated ones, written atomically."""
    from qzhou_jax.data.sources import read_jsonl
    from qzhou_jax.synthesis.cache import write_atomic

    rows = [row.fields for row in read_jsonl(input_path)]
    counts: dict[str, int] = {}
    kept = filter_rows(rows, d, counts)
    write_atomic(output_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {"input": str(input_path), "output": str(output_path), "rows": len(rows), "kept": len(kept),
            "decontaminated": counts, "sources": d.sources}


_BUILT: dict[str, Decontaminator] = {}


def sample_texts(sample) -> list[str]:
    """The texts of a training sample that must not be evaluation texts (query + positive; both sides of a pair;
    a classification text)."""
    for fields in (("query", "positive"), ("text_a", "text_b"), ("text",)):
        if all(hasattr(sample, f) for f in fields):
            return [getattr(sample, f) for f in fields]
    raise TypeError(f"no texts known for {type(sample).__name__}")


def drop_contaminated_samples(samples: list, tasks: str, counter, dataset: str, where: str) -> list:
    """The data config's `decontaminate` option: samples minus contaminated ones, each counted in `counter`."""
    if tasks not in _BUILT:  # one index per task list and process: stage configs repeat datasets
        _BUILT[tasks] = from_eval_tasks(tasks)
    d = _BUILT[tasks]
    kept = []
    for i, sample in enumerate(samples):
        reason = next((r for r in map(d.match, sample_texts(sample)) if r), None)
        if reason:
            counter.skip(dataset, f"contaminated: {reason} match with an evaluation text", f"{where} sample {i}")
        else:
            kept.append(sample)
    return kept
