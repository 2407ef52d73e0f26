"""Row fields -> samples, by transform name, with a per-dataset field mapping (config `fields`).

| transform               | task           | default fields (config `fields` renames)                        |
|-------------------------|----------------|-----------------------------------------------------------------|
| "retrieval"             | retrieval      | query, pos (str or list: one sample per positive), neg?, prompt? (FlagEmbedding) |
| "title_body"            | retrieval      | title, body  (options max_chars / max_words truncate the body)  |
| "question_answer"       | retrieval      | question, answer, negatives?                                    |
| "reading_comprehension" | retrieval      | context, question, answer (str, list, or SQuAD {"text": [...]}: first answer); |
|                         |                | max_chars / max_words truncate the context, so the question survives token truncation |
| "claim_evidence"        | retrieval      | claim, supporting (list), refuting? (list)                      |
| "sts"                   | pair_score     | sentence1, sentence2, score (0-5 or binary label)               |
| "nli"                   | pair_score     | sentence1, sentence2, label (names; `label_names` maps int ids) |
| "classification"        | classification | text, label (`label_names` maps int ids)                        |

"?" marks optional fields. A row-level "prompt"/"instruction" field (name via fields["instruction"]) overrides the
dataset's instruction for that row.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data import transforms
from qzhou_jax.data.errors import DataError
from qzhou_jax.data.formats import (
    CLASSIFICATION,
    PAIR_SCORE,
    RETRIEVAL,
    FLAG_EMBEDDING_FIELDS,
    ClassificationSample,
    flag_embedding_samples,
    get_field,
    get_optional_text,
    get_text,
    get_text_list,
)
from qzhou_jax.data.sources import Invalid, Row, raise_invalid


@dataclasses.dataclass(frozen=True)
class AdapterOptions:
    instruction: str = ""
    max_chars: int | None = None
    max_words: int | None = None
    label_names: Sequence[str] | None = None


def _label(row: Mapping[str, Any], field: str, where: str, options: AdapterOptions):
    """A label value; integer ids are mapped through `label_names` when given."""
    value = get_field(row, field, where)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple, Mapping)) or getattr(value, "ndim", 0) > 0:
        raise DataError(where, f"field {field!r} is a {type(value).__name__} ({str(value)[:60]}): one label per row")
    if hasattr(value, "item"):
        value = value.item()
    if options.label_names is not None and isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(options.label_names):
            raise DataError(where, f"field {field!r} has unknown label id {value}; "
                                   f"label_names has {len(options.label_names)} entries")
        value = options.label_names[value]
    if isinstance(value, str) and not value.strip():
        raise DataError(where, f"field {field!r} is empty")
    return value


def _answer(row, field, where) -> str:
    value = get_field(row, field, where)
    if isinstance(value, Mapping):  # SQuAD / HF squad: {"text": [...], "answer_start": [...]}
        value = get_field(value, "text", where)
    texts = get_text_list({field: value}, field, where, required=True)
    return texts[0]


def _retrieval(row, where, f, o):
    return flag_embedding_samples(row, where, o.instruction, f)


def _title_body(row, where, f, o):
    return [transforms.title_body(get_text(row, f["title"], where), get_text(row, f["body"], where),
                                  instruction=get_optional_text(row, f["instruction"], where, o.instruction),
                                  max_chars=o.max_chars, max_words=o.max_words)]


def _question_answer(row, where, f, o):
    return [transforms.question_answer(
        get_text(row, f["question"], where), _answer(row, f["answer"], where),
        negatives=get_text_list(row, f["negatives"], where, required=False),
        instruction=get_optional_text(row, f["instruction"], where, o.instruction))]


def _reading_comprehension(row, where, f, o):
    context = transforms.truncate_text(get_text(row, f["context"], where), max_chars=o.max_chars,
                                       max_words=o.max_words)
    return [transforms.reading_comprehension(
        context, get_text(row, f["question"], where), _answer(row, f["answer"], where),
        instruction=get_optional_text(row, f["instruction"], where, o.instruction))]


def _claim_evidence(row, where, f, o):
    return transforms.claim_evidence(
        get_text(row, f["claim"], where), get_text_list(row, f["supporting"], where, required=True),
        get_text_list(row, f["refuting"], where, required=False),
        instruction=get_optional_text(row, f["instruction"], where, o.instruction))


def _sts(row, where, f, o):
    score = transforms.sts_score(get_field(row, f["score"], where), where, f["score"])
    return [transforms.PairScoreSample(get_text(row, f["text_a"], where), get_text(row, f["text_b"], where), score,
                                       get_optional_text(row, f["instruction"], where, o.instruction))]


def _nli(row, where, f, o):
    score = transforms.nli_score(_label(row, f["label"], where, o), where, f["label"])
    return [transforms.PairScoreSample(get_text(row, f["text_a"], where), get_text(row, f["text_b"], where), score,
                                       get_optional_text(row, f["instruction"], where, o.instruction))]


def _classification(row, where, f, o):
    label = _label(row, f["label"], where, o)
    return [ClassificationSample(get_text(row, f["text"], where), str(label),
                                 get_optional_text(row, f["instruction"], where, o.instruction))]


@dataclasses.dataclass(frozen=True)
class Adapter:
    task: str
    fields: Mapping[str, str]
    convert: Callable[[Mapping[str, Any], str, Mapping[str, str], AdapterOptions], list]


ADAPTERS = {
    "retrieval": Adapter(RETRIEVAL, FLAG_EMBEDDING_FIELDS, _retrieval),
    "title_body": Adapter(RETRIEVAL, {"title": "title", "body": "body", "instruction": "prompt"}, _title_body),
    "question_answer": Adapter(RETRIEVAL, {"question": "question", "answer": "answer", "negatives": "negatives",
                                           "instruction": "prompt"}, _question_answer),
    "reading_comprehension": Adapter(RETRIEVAL, {"context": "context", "question": "question", "answer": "answer",
                                                 "instruction": "prompt"}, _reading_comprehension),
    "claim_evidence": Adapter(RETRIEVAL, {"claim": "claim", "supporting": "supporting", "refuting": "refuting",
                                          "instruction": "prompt"}, _claim_evidence),
    "sts": Adapter(PAIR_SCORE, {"text_a": "sentence1", "text_b": "sentence2", "score": "score",
                                "instruction": "prompt"}, _sts),
    "nli": Adapter(PAIR_SCORE, {"text_a": "sentence1", "text_b": "sentence2", "label": "label",
                                "instruction": "prompt"}, _nli),
    "classification": Adapter(CLASSIFICATION, {"text": "text", "label": "label", "instruction": "prompt"},
                              _classification),
}
DEFAULT_TRANSFORM = {RETRIEVAL: "retrieval", PAIR_SCORE: "sts", CLASSIFICATION: "classification"}


def get_adapter(transform: str, fields: Mapping[str, str] | None = None) -> tuple[Adapter, dict[str, str]]:
    """The adapter and its field mapping with `fields` overrides applied (unknown keys are an error)."""
    if transform not in ADAPTERS:
        raise UsageError(f"unknown transform {transform!r}; expected one of {sorted(ADAPTERS)}")
    adapter = ADAPTERS[transform]
    unknown = set(fields or {}) - set(adapter.fields)
    if unknown:
        raise UsageError(f"transform {transform!r} has no fields {sorted(unknown)}; "
                         f"its fields are {sorted(adapter.fields)}")
    return adapter, {**adapter.fields, **(fields or {})}


def samples_from_rows(rows: Iterable[Row], transform: str, fields: Mapping[str, str] | None = None,
                      options: AdapterOptions = AdapterOptions(), invalid: Invalid = raise_invalid) -> list:
    """Converts every row; a bad row goes to `invalid` (raise, or count and skip)."""
    adapter, mapping = get_adapter(transform, fields)
    samples = []
    for row in rows:
        try:
            samples.extend(adapter.convert(row.fields, row.where, mapping, options))
        except DataError as err:
            invalid(err)
    return samples
