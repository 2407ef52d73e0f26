"""Samples -> the project-wide host batch (numpy, right-padded, lengths from a small set of buckets): the padded
layout of the batch schema (batch_schema.py FIELDS documents every field, dtype and axis), i.e. anchor_ids /
anchor_mask [B, La], cand_ids / cand_mask [B, C, Lc], cand_valid [B, C], score [B] (pair_score gold, else 0),
labels [B, 1 + C] (classification label ids, else -1), anchor_hash [B] / cand_hash [B, C] (`text_hash` of each
normalised text, before prompting: the losses' duplicate masks), plus the host keys dataset_id [B] and task (str).

Two stages, so each runs where it belongs in the Grain pipeline:
- `ExampleBuilder(samples, spec)(position, rng)` -> text-level example (prompts applied, candidates padded to C
  with "" / valid False, surplus retrieval negatives sampled, classification triplets drawn); runs per element.
- `Collator(tokenizer, spec, buckets)(examples)` -> the arrays above; runs as the batch function, one tokenizer
  call per side. A reading-comprehension query keeps its suffix (joiner + question) whole: when the whole
  prompted query exceeds max_len_query, the text before the suffix (prompt + context) is cut in token space so
  that the suffix fits. Retrieval: anchor = query, candidates = [positive] + hard negatives. Pair score: anchor =
  text_a, C = 1. Classification: anchor = text, candidates = [positive] + negatives.
Prompting (`format_query`): the anchor always gets the dataset's instruction when it has one; candidates too when
the dataset is `symmetric` (default: pair_score and classification, not retrieval).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qzhou_jax.data.formats import CLASSIFICATION, PAIR_SCORE, RETRIEVAL, check_task
from qzhou_jax.batch_schema import FIELDS, HOST_KEYS, PACKED, array
from qzhou_jax.data.transforms import LabelIndex, example_based_triplet, text_hash
from qzhou_jax.tokenizer import bucket_length, format_query, pad_rows

# What a padded host batch holds: every schema field but the packed ones, and the host keys.
BATCH_KEYS = tuple(n for n in FIELDS if n not in PACKED) + HOST_KEYS


@dataclasses.dataclass(frozen=True)
class TokenizeSpec:
    """Per-dataset layout options; `num_candidates` C is 1 (positive) + negatives, and 1 for pair_score."""

    dataset_id: int
    task: str
    num_candidates: int
    max_len_query: int
    max_len_passage: int
    symmetric: bool
    instruction: str = ""
    prompt_sep: str = " "
    label_ids: Mapping[str, int] | None = None  # classification label vocabulary

    def __post_init__(self):
        check_task(self.task)
        if self.num_candidates < 1 or (self.task == PAIR_SCORE and self.num_candidates != 1):
            raise ValueError(f"num_candidates={self.num_candidates} invalid for task {self.task!r}")
        if min(self.max_len_query, self.max_len_passage) < 1:
            raise ValueError("max lengths must be >= 1")


def label_vocabulary(samples) -> dict[str, int]:
    """Sorted label names -> ids (0..K-1); stable across hosts and runs."""
    known = getattr(samples, "labels", None)  # prepared datasets: no record reads
    return {label: i for i, label in enumerate(sorted(set(known) if known is not None else {s.label for s in samples}))}


class ExampleBuilder:
    """(position in `samples`, rng) -> text example; deterministic given the rng Grain derives per element."""

    def __init__(self, samples: Sequence[Any], spec: TokenizeSpec):
        self.samples = samples
        self.spec = spec
        self.label_index = LabelIndex(samples) if spec.task == CLASSIFICATION else None
        if self.label_index is not None and (singles := self.label_index.singleton_labels()):
            raise ValueError(f"dataset {spec.dataset_id}: labels with a single text cannot form positives: "
                             f"{singles}")

    def _prompt(self, text: str, instruction: str) -> str:
        return format_query(text, instruction, sep=self.spec.prompt_sep)

    def __call__(self, position: int, rng: np.random.Generator) -> dict[str, Any]:
        spec, sample = self.spec, self.samples[position]
        instruction = sample.instruction or spec.instruction
        labels = [-1] * (1 + spec.num_candidates)
        score, keep_suffix = 0.0, 0
        if spec.task == RETRIEVAL:
            keep_suffix = sample.keep_suffix
            anchor, negatives = sample.query, list(sample.negatives)
            if len(negatives) > spec.num_candidates - 1:
                keep = rng.choice(len(negatives), size=spec.num_candidates - 1, replace=False)
                negatives = [negatives[i] for i in keep]
            candidates = [sample.positive, *negatives]
        elif spec.task == PAIR_SCORE:
            anchor, candidates, score = sample.text_a, [sample.text_b], sample.score
        else:
            triplet = example_based_triplet(self.samples, position, self.label_index, rng, spec.num_candidates - 1)
            anchor, candidates = triplet.text, [triplet.positive, *triplet.negatives]
            labels[: len(triplet.labels)] = [spec.label_ids[label] for label in triplet.labels]
        anchor_hash, cand_hash = text_hash(anchor), [text_hash(c) for c in candidates]
        anchor = self._prompt(anchor, instruction)
        if spec.symmetric:
            candidates = [self._prompt(c, instruction) for c in candidates]
        valid = [True] * len(candidates) + [False] * (spec.num_candidates - len(candidates))
        candidates = candidates + [""] * (spec.num_candidates - len(candidates))
        cand_hash = cand_hash + [0] * (spec.num_candidates - len(cand_hash))
        return {"anchor": anchor, "candidates": tuple(candidates), "cand_valid": tuple(valid), "score": score,
                "labels": tuple(labels), "dataset_id": spec.dataset_id, "position": position,
                "anchor_keep_suffix": keep_suffix, "anchor_hash": anchor_hash, "cand_hash": tuple(cand_hash)}


def length_buckets(buckets: Sequence[int], max_len: int) -> list[int]:
    """Buckets below `max_len`, then `max_len` itself: truncated rows always fit, shapes stay few."""
    return sorted({int(b) for b in buckets if 0 < b < max_len} | {int(max_len)})


class Collator:
    """Text examples -> host batch arrays (see module docstring). Thread-safe: Grain calls it from threads.

    It encodes with a private copy of the tokenizer's Rust backend (truncation/padding disabled) and truncates
    ids itself: HF's `__call__` mutates the backend's truncation state, which races across threads.
    """

    def __init__(self, tokenizer, spec: TokenizeSpec, buckets: Sequence[int]):
        self.spec = spec
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._backend = copy.deepcopy(tokenizer.backend_tokenizer)
        self._backend.no_truncation()
        self._backend.no_padding()
        self.query_buckets = length_buckets(buckets, spec.max_len_query)
        self.passage_buckets = length_buckets(buckets, spec.max_len_passage)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def truncate(self, texts: Sequence[str], max_len: int, keep_suffix: Sequence[int] | None = None) -> list[list[int]]:
        """Token ids cut to max_len; a text with keep_suffix k > 0 that is too long becomes
        ids(text[:-k])[:max_len - len(ids(text[-k:]))] + ids(text[-k:]) (the suffix itself cut only if it alone
        exceeds max_len)."""
        rows = self._ids(texts)
        for i, k in enumerate(keep_suffix or ()):
            if k and len(rows[i]) > max_len:
                head, tail = self._ids([texts[i][:-k], texts[i][-k:]])
                tail = tail[:max_len]
                rows[i] = head[: max_len - len(tail)] + tail
        return [row[:max_len] for row in rows]

    def _encode(self, texts: Sequence[str], max_len: int, buckets: Sequence[int],
                keep_suffix: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        rows = self.truncate(texts, max_len, keep_suffix)
        length = bucket_length(max(1, max(map(len, rows), default=0)), buckets)
        return pad_rows(rows, length, self.pad_id, "right")

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        b, c = len(examples), self.spec.num_candidates
        anchor_ids, anchor_mask = self._encode([e["anchor"] for e in examples], self.spec.max_len_query,
                                               self.query_buckets, [e.get("anchor_keep_suffix", 0) for e in examples])
        cand_ids, cand_mask = self._encode([t for e in examples for t in e["candidates"]],
                                           self.spec.max_len_passage, self.passage_buckets)
        batch = {
            "anchor_ids": anchor_ids,
            "anchor_mask": anchor_mask,
            "cand_ids": cand_ids.reshape(b, c, -1),
            "cand_mask": cand_mask.reshape(b, c, -1),
            "cand_valid": array("cand_valid", [e["cand_valid"] for e in examples], (b, c)),
            "score": array("score", [e["score"] for e in examples]),
            "labels": array("labels", [e["labels"] for e in examples], (b, 1 + c)),
            "dataset_id": np.array([e["dataset_id"] for e in examples], dtype=np.int32),
            "task": self.spec.task,
        }
        if "anchor_hash" in examples[0]:  # ExampleBuilder's examples carry them; hand-made ones may not
            batch["anchor_hash"] = array("anchor_hash", [e["anchor_hash"] for e in examples])
            batch["cand_hash"] = array("cand_hash", [e["cand_hash"] for e in examples], (b, c))
        return batch
