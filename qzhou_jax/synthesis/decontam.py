"""Decontamination of synthesis output and of any FlagEmbedding file: drop rows whose query or positive matches an
evaluation text (the matcher: data/contamination.py).

Evaluation texts: every non-train split of the local evaluation tasks (`eval.tasks.evaluation_texts`; for
retrieval, the queries and judged documents of those splits; the shared corpus itself is not evaluation text) and
any files the user names (JSONL: every string in fields query/pos/neg/text/sentence1/sentence2, or plain text: one
per line).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data.contamination import NGRAM, Decontaminator, from_texts  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

_FILE_FIELDS = ("query", "pos", "neg", "text", "sentence1", "sentence2", "question", "answer")


def from_eval_tasks(names: str = "all", decontaminator: Decontaminator | None = None) -> Decontaminator:
    """Adds every non-train split of the named local tasks ("all", or a comma-separated list)."""
    from qzhou_jax.eval.tasks import evaluation_texts  # local: the task table reads data only when asked

    return from_texts(evaluation_texts(names), decontaminator)


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
