"""The three sample shapes of the unified multi-task framework (docs/recipe.md section 2) and checked field access.

| task type        | sample                                   | loss     |
|------------------|------------------------------------------|----------|
| "retrieval"      | RetrievalSample(query, positive, negatives, instruction) | InfoNCE  |
| "pair_score"     | PairScoreSample(text_a, text_b, score, instruction)      | CoSENT   |
| "classification" | ClassificationSample(text, label, instruction), materialised per draw into
|                  | ClassificationTriplet(text, positive, negatives, labels) | masked InfoNCE |

FlagEmbedding JSONL rows (`{"query", "pos": [...], "neg": [...], "prompt"}`) read directly as retrieval data:
`flag_embedding_samples` emits ONE SAMPLE PER POSITIVE (each sharing the row's negatives), so a dataset's size
n_i counts (query, positive) pairs, and no positive is silently dropped.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from qzhou_jax.data.errors import DataError

RETRIEVAL = "retrieval"
PAIR_SCORE = "pair_score"
CLASSIFICATION = "classification"
TASK_TYPES = (RETRIEVAL, PAIR_SCORE, CLASSIFICATION)


@dataclasses.dataclass(frozen=True)
class RetrievalSample:
    """`keep_suffix`: the last keep_suffix characters of `query` (reading comprehension: joiner + question) survive
    length truncation whole; the tokenizer cuts the text before them instead (0: plain right truncation)."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    instruction: str = ""
    keep_suffix: int = dataclasses.field(default=0, compare=False)  # how to truncate, not what the sample is

    def __post_init__(self):
        object.__setattr__(self, "negatives", tuple(self.negatives))


@dataclasses.dataclass(frozen=True)
class PairScoreSample:
    text_a: str
    text_b: str
    score: float
    instruction: str = ""

    def __post_init__(self):
        object.__setattr__(self, "score", float(self.score))


@dataclasses.dataclass(frozen=True)
class ClassificationSample:
    text: str
    label: str
    instruction: str = ""

    def __post_init__(self):
        object.__setattr__(self, "label", str(self.label))


@dataclasses.dataclass(frozen=True)
class ClassificationTriplet:
    """One example-based draw: `labels` = (label of text, of positive, of each negative)."""

    text: str
    positive: str
    negatives: tuple[str, ...]
    labels: tuple[str, ...]
    instruction: str = ""

    def __post_init__(self):
        object.__setattr__(self, "negatives", tuple(self.negatives))
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if len(self.labels) != 2 + len(self.negatives):
            raise ValueError(f"labels must cover text, positive and {len(self.negatives)} negatives, got {self.labels}")


SAMPLE_TYPES = {RETRIEVAL: RetrievalSample, PAIR_SCORE: PairScoreSample, CLASSIFICATION: ClassificationSample}


def check_task(task: str, where: str = "config") -> str:
    if task not in TASK_TYPES:
        raise DataError(where, f"unknown task type {task!r}; expected one of {TASK_TYPES}")
    return task


# ---- checked field access: every failure names the row and the field ----

def get_field(row: Mapping[str, Any], field: str, where: str) -> Any:
    if not isinstance(row, Mapping):
        raise DataError(where, f"expected an object with field {field!r}, got {type(row).__name__}")
    if field not in row or row[field] is None:
        raise DataError(where, f"field {field!r} is missing")
    return row[field]


def as_text(value: Any, field: str, where: str, *, strip: bool = True) -> str:
    """A non-empty string (bytes from TFDS/Arrow decoded as UTF-8), surrounding whitespace stripped unless
    `strip=False` (mining writes texts back: a negative must equal its corpus entry as given)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(where, f"field {field!r} is not valid UTF-8 ({err.reason})") from None
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar string from TFDS
        value = value.item()
        if isinstance(value, bytes):
            return as_text(value, field, where, strip=strip)
    if not isinstance(value, str):
        raise DataError(where, f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, f"field {field!r} is empty")
    return value.strip() if strip else value


def get_text(row: Mapping[str, Any], field: str, where: str, *, strip: bool = True) -> str:
    return as_text(get_field(row, field, where), field, where, strip=strip)


def get_optional_text(row: Mapping[str, Any], field: str | None, where: str, default: str = "") -> str:
    if not field or row.get(field) is None:
        return default
    value = row[field]
    if isinstance(value, (str, bytes)) and not value.strip():
        return default
    return as_text(value, field, where)


def get_text_list(row: Mapping[str, Any], field: str, where: str, *, required: bool,
                  strip: bool = True) -> tuple[str, ...]:
    """A list of non-empty strings; a bare string counts as a list of one. Missing -> () unless required."""
    if not required and (field not in row or row[field] is None):
        return ()
    value = get_field(row, field, where)
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, Sequence) and not hasattr(value, "tolist"):
        raise DataError(where, f"field {field!r} must be a list of strings, got {type(value).__name__}")
    items = list(value.tolist() if hasattr(value, "tolist") else value)
    texts = tuple(as_text(v, f"{field}[{i}]", where, strip=strip) for i, v in enumerate(items))
    if required and not texts:
        raise DataError(where, f"field {field!r} is empty")
    return texts


FLAG_EMBEDDING_FIELDS = {"query": "query", "pos": "pos", "neg": "neg", "instruction": "prompt"}


def flag_embedding_samples(row: Mapping[str, Any], where: str, instruction: str = "",
                           fields: Mapping[str, str] = FLAG_EMBEDDING_FIELDS) -> list[RetrievalSample]:
    """FlagEmbedding row -> one RetrievalSample per positive; the row's "prompt" overrides `instruction`.
    `fields` renames the keys (query, pos, neg, instruction)."""
    query = get_text(row, fields["query"], where)
    positives = get_text_list(row, fields["pos"], where, required=True)
    negatives = get_text_list(row, fields["neg"], where, required=False)
    prompt = get_optional_text(row, fields["instruction"], where, default=instruction)
    return [RetrievalSample(query, positive, negatives, prompt) for positive in positives]
