"""Adapters for the public datasets in the shared data folder (`data_dir()`), as evaluation or training data.

Location: env var QZHOU_DATA_DIR, else `<repository root>/../shared/data`. Nothing is copied into the repository.

| reader (raw records, for evaluation)            | names / splits                                          | returns |
|-------------------------------------------------|---------------------------------------------------------|---------|
| `read_sts(name, split)`                          | stsb: train/dev/test; sickr: train/trial/test (relatedness 1-5); atec: valid/test; lcqmc: dev/test (0/1) | list[PairScoreSample] |
| `read_nli(name, split)`                          | sickr: train/trial/test; ocnli: train (=train.3k)/dev ("-" skipped, counted) | list[PairScoreSample], score 2/1/0 |
| `read_classification(name, split)`               | banking77: train/test; trec: train/test (DESC ENTY ABBR HUM LOC NUM); sst2: train/dev/test; waimai: all | list[ClassificationSample] |
| `read_beir(name, split)`                         | scifact: train/test                                     | (corpus id->"title text", queries id->text, qrels qid->{docid: rel}) |
| `read_reading_comprehension(name, split)`        | cmrc2018: trial/dev (context + joiner + question -> first answer; the 2 empty trial questions skipped, counted) | list[RetrievalSample] |
| `read_answer_selection(name, split)`             | trecqa: train/dev/test                                  | list[AnswerGroup(question, positives, negatives)] |
| `read_retrieval(name, split)`                    | scifact (queries with qrels -> each relevant doc), cmrc2018, trecqa (label 1 positive, label 0 hard negatives; questions without a correct answer skipped, counted) | list[RetrievalSample] |

Every reader takes `counter: SkipCounter | None` (None = strict: the first bad row raises `DataError` naming
file, line and field). `SHARED_DATASETS` maps a training name (config source "shared:<name>") to its task type,
reader and splits; pair-score sets there are read as STS (sickr_nli / ocnli as NLI).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data import transforms
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import (
    CLASSIFICATION,
    PAIR_SCORE,
    RETRIEVAL,
    ClassificationSample,
    PairScoreSample,
    RetrievalSample,
    as_text,
    get_field,
    get_text,
)
from qzhou_jax.data.sources import BeirData, open_text, read_beir_folder, read_jsonl

DATA_DIR_ENV = "QZHOU_DATA_DIR"


def data_dir() -> Path:
    """$QZHOU_DATA_DIR, else <repository root>/../shared/data."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def _path(folder: str, name: str, split: str, files: dict[str, str]) -> Path:
    if split not in files:
        raise UsageError(f"{name}: unknown split {split!r}; available: {sorted(files)}")
    path = data_dir() / folder / files[split]
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (set {DATA_DIR_ENV} to the shared data folder)")
    return path


def _counter(counter: SkipCounter | None) -> SkipCounter:
    return counter if counter is not None else SkipCounter()


def _tsv_rows(path: Path, *, header: bool, n_fields: int, encoding: str = "utf-8"):
    """(where, fields) per data row; QUOTE_NONE because the sentences contain quote characters."""
    with open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_no, fields in enumerate(reader, start=1):
            if header and line_no == 1:
                continue
            if not fields or not "".join(fields).strip():
                continue
            where = f"{path}:{line_no}"
            if len(fields) < n_fields:
                yield where, DataError(where, f"expected {n_fields} tab-separated fields, got {len(fields)}")
            else:
                yield where, fields


def _csv_records(path: Path, encoding: str = "utf-8"):
    """(where, dict) per CSV record; `where` is the record's first line (records may span lines)."""
    with open_text(path, encoding) as f:
        reader = csv.DictReader(f)
        line = reader.line_num + 1
        for record in reader:
            yield f"{path}:{line}", record
            line = reader.line_num + 1


# ---- pair score ----

_STS_FILES = {
    "stsb": ("stsb_en_original", {s: "stsbenchmark.tsv.gz" for s in ("train", "dev", "test")}),
    "sickr": ("sickr", {"train": "SICK_train.txt", "trial": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}),
    "atec": ("atec", {"valid": "ATEC.valid.data", "test": "ATEC.test.data"}),
    "lcqmc": ("lcqmc", {"dev": "dev.txt", "test": "test.txt"}),
}


def read_sts(name: str, split: str, counter: SkipCounter | None = None) -> list[PairScoreSample]:
    if name not in _STS_FILES:
        raise ValueError(f"read_sts: unknown dataset {name!r}; available: {sorted(_STS_FILES)}")
    counter = _counter(counter)
    folder, files = _STS_FILES[name]
    path = _path(folder, name, split, files)
    if name == "stsb":  # split genre dataset year sid score sentence1 sentence2
        layout, header, encoding = (6, 7, 5, 8), True, "utf-8"
    elif name == "sickr":  # pair_ID sentence_A sentence_B relatedness_score entailment_judgment
        layout, header, encoding = (1, 2, 3, 5), True, "utf-8-sig"
    else:  # sentence1 sentence2 label(0/1)
        layout, header, encoding = (0, 1, 2, 3), False, "utf-8"
    a, b, s, n_fields = layout
    out = []
    for where, fields in _tsv_rows(path, header=header, n_fields=n_fields, encoding=encoding):
        try:
            if isinstance(fields, DataError):
                raise fields
            if name == "stsb" and fields[0] != split:
                continue
            out.append(PairScoreSample(as_text(fields[a], "sentence1", where), as_text(fields[b], "sentence2", where),
                                       transforms.sts_score(fields[s], where, "score")))
        except DataError as err:
            counter.invalid(name, err)
    return out


_NLI_FILES = {
    "sickr": ("sickr", _STS_FILES["sickr"][1]),
    "ocnli": ("ocnli", {"train": "train.3k.json", "dev": "dev.json"}),
}


def read_nli(name: str, split: str, counter: SkipCounter | None = None) -> list[PairScoreSample]:
    """NLI pairs scored entailment 2 / neutral 1 / contradiction 0."""
    if name not in _NLI_FILES:
        raise ValueError(f"read_nli: unknown dataset {name!r}; available: {sorted(_NLI_FILES)}")
    counter = _counter(counter)
    folder, files = _NLI_FILES[name]
    path = _path(folder, name, split, files)
    out = []
    if name == "sickr":
        for where, fields in _tsv_rows(path, header=True, n_fields=5, encoding="utf-8-sig"):
            try:
                if isinstance(fields, DataError):
                    raise fields
                out.append(PairScoreSample(as_text(fields[1], "sentence_A", where),
                                           as_text(fields[2], "sentence_B", where),
                                           transforms.nli_score(fields[4], where, "entailment_judgment")))
            except DataError as err:
                counter.invalid(name, err)
        return out
    for row in read_jsonl(path, lambda err: counter.invalid(name, err)):
        try:
            label = get_field(row.fields, "label", row.where)
            if label == "-":
                counter.skip(name, "no consensus label '-'", row.where)
                continue
            out.append(PairScoreSample(get_text(row.fields, "sentence1", row.where),
                                       get_text(row.fields, "sentence2", row.where),
                                       transforms.nli_score(label, row.where)))
        except DataError as err:
            counter.invalid(name, err)
    return out


# ---- classification ----

TREC_LABELS = ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")  # ids 0..5 in the SentEval files (by class counts)
SENTIMENT_LABELS = ("negative", "positive")
_CLASSIFICATION_FILES = {
    "banking77": ("banking77", {"train": "train.csv", "test": "test.csv"}),
    "trec": ("trec", {"train": "TREC.train.all", "test": "TREC.test.all"}),
    "sst2": ("sst2", {"train": "stsa.binary.train", "dev": "stsa.binary.dev", "test": "stsa.binary.test"}),
    "waimai": ("waimai_10k", {"all": "waimai_10k.csv"}),
}


def _label_id(value: str, names: tuple[str, ...], field: str, where: str) -> str:
    if not value.isdigit() or int(value) >= len(names):
        raise DataError(where, f"field {field!r} has unknown label {value!r}; expected 0..{len(names) - 1}")
    return names[int(value)]


def read_classification(name: str, split: str, counter: SkipCounter | None = None) -> list[ClassificationSample]:
    if name not in _CLASSIFICATION_FILES:
        raise ValueError(f"read_classification: unknown dataset {name!r}; "
                         f"available: {sorted(_CLASSIFICATION_FILES)}")
    counter = _counter(counter)
    folder, files = _CLASSIFICATION_FILES[name]
    path = _path(folder, name, split, files)
    out = []
    if name in ("banking77", "waimai"):
        text_field, label_field = ("text", "category") if name == "banking77" else ("review", "label")
        for where, record in _csv_records(path, "utf-8" if name == "banking77" else "utf-8-sig"):
            try:
                label = get_text(record, label_field, where)
                if name == "waimai":
                    label = _label_id(label, SENTIMENT_LABELS, label_field, where)
                out.append(ClassificationSample(get_text(record, text_field, where), label))
            except DataError as err:
                counter.invalid(name, err)
        return out
    names = TREC_LABELS if name == "trec" else SENTIMENT_LABELS
    encoding = "latin-1" if (name, split) == ("trec", "train") else "utf-8"
    with open_text(path, encoding) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                label, _, text = line.strip().partition(" ")
                out.append(ClassificationSample(as_text(text, "text", where), _label_id(label, names, "label", where)))
            except DataError as err:
                counter.invalid(name, err)
    return out


# ---- retrieval ----

def read_beir(name: str = "scifact", split: str = "test", counter: SkipCounter | None = None) -> BeirData:
    """BEIR folder; unpacks as `corpus, queries, qrels = read_beir("scifact", "test")`."""
    if name != "scifact":
        raise ValueError(f"read_beir: unknown dataset {name!r}; available: ['scifact']")
    counter = _counter(counter)
    _path("scifact", name, split, {s: f"qrels/{s}.tsv" for s in ("train", "test")})
    return read_beir_folder(data_dir() / "scifact", split, lambda err: counter.invalid(name, err))


def beir_samples(beir: BeirData, instruction: str = "") -> list[RetrievalSample]:
    """One sample per (query, relevant doc) in qrels order; docs judged 0 become that query's hard negatives."""
    out = []
    for qid, judged in beir.qrels.items():
        negatives = tuple(beir.corpus[d] for d, rel in judged.items() if rel <= 0)
        out.extend(RetrievalSample(beir.queries[qid], beir.corpus[d], negatives, instruction)
                   for d, rel in judged.items() if rel > 0)
    return out


def read_reading_comprehension(name: str = "cmrc2018", split: str = "dev", counter: SkipCounter | None = None,
                               max_context_chars: int | None = None) -> list[RetrievalSample]:
    """SQuAD-style JSON; each question -> reading_comprehension(context, question, first answer).

    `max_context_chars` cuts the context first: the query is truncated from the right by the tokenizer, which
    would otherwise drop the question that follows a long context."""
    if name != "cmrc2018":
        raise ValueError(f"read_reading_comprehension: unknown dataset {name!r}; available: ['cmrc2018']")
    counter = _counter(counter)
    path = _path("cmrc2018", name, split, {"trial": "cmrc2018_trial.json", "dev": "cmrc2018_dev.json"})
    with open_text(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}", f"malformed JSON ({err.msg})") from None
    out = []
    for i, article in enumerate(get_field(doc, "data", str(path))):
        for j, paragraph in enumerate(get_field(article, "paragraphs", f"{path}:data[{i}]")):
            where_p = f"{path}:data[{i}].paragraphs[{j}]"
            for k, qa in enumerate(paragraph.get("qas") or []):
                where = f"{where_p}.qas[{k}]"
                if isinstance(qa.get("question"), str) and not qa["question"].strip():
                    counter.skip(name, "empty question (a defect of the published file)", where)
                    continue
                try:
                    context = transforms.truncate_text(get_text(paragraph, "context", where_p),
                                                       max_chars=max_context_chars)
                    answers = get_field(qa, "answers", where)
                    if not answers:
                        raise DataError(where, "field 'answers' is empty")
                    answer = get_text(answers[0], "text", f"{where}.answers[0]")
                    out.append(transforms.reading_comprehension(context, get_text(qa, "question", where), answer))
                except DataError as err:
                    counter.invalid(name, err)
    return out


@dataclasses.dataclass(frozen=True)
class AnswerGroup:
    question: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


def read_answer_selection(name: str = "trecqa", split: str = "test",
                          counter: SkipCounter | None = None) -> list[AnswerGroup]:
    """TrecQA answer selection grouped per question (file order): label 1 answers positive, label 0 negative."""
    if name != "trecqa":
        raise ValueError(f"read_answer_selection: unknown dataset {name!r}; available: ['trecqa']")
    counter = _counter(counter)
    path = _path("trecqa_wang", name, split, {s: f"{s}.csv" for s in ("train", "dev", "test")})
    groups: dict[str, tuple[list, list]] = {}
    for where, record in _csv_records(path):
        try:
            question, answer = get_text(record, "qtext", where), get_text(record, "atext", where)
            label = get_text(record, "label", where)
            if label not in ("0", "1"):
                raise DataError(where, f"field 'label' has unknown label {label!r}; expected 0 or 1")
            groups.setdefault(question, ([], []))[0 if label == "1" else 1].append(answer)
        except DataError as err:
            counter.invalid(name, err)
    return [AnswerGroup(q, tuple(p), tuple(n)) for q, (p, n) in groups.items()]


def read_retrieval(name: str, split: str, counter: SkipCounter | None = None) -> list[RetrievalSample]:
    """Training view of the retrieval-shaped sets: scifact, cmrc2018, trecqa."""
    counter = _counter(counter)
    if name == "scifact":
        return beir_samples(read_beir(name, split, counter))
    if name == "cmrc2018":
        return read_reading_comprehension(name, split, counter)
    if name == "trecqa":
        out = []
        for group in read_answer_selection(name, split, counter):
            if not group.positives:
                counter.skip(name, "question without a correct answer", f"{name}/{split}: {group.question[:60]!r}")
            out.extend(transforms.question_answer(group.question, p, negatives=group.negatives)
                       for p in group.positives)
        return out
    raise ValueError(f"read_retrieval: unknown dataset {name!r}; available: ['cmrc2018', 'scifact', 'trecqa']")


# ---- training registry ----

@dataclasses.dataclass(frozen=True)
class SharedDataset:
    task: str
    read: Callable[[str, SkipCounter | None], list]  # (split, counter) -> samples
    splits: tuple[str, ...]


def _entry(task, reader, name, splits):
    return SharedDataset(task, lambda split, counter=None: reader(name, split, counter), tuple(splits))


SHARED_DATASETS: dict[str, SharedDataset] = {
    **{n: _entry(PAIR_SCORE, read_sts, n, _STS_FILES[n][1]) for n in _STS_FILES},
    "sickr_nli": _entry(PAIR_SCORE, read_nli, "sickr", _NLI_FILES["sickr"][1]),
    "ocnli": _entry(PAIR_SCORE, read_nli, "ocnli", _NLI_FILES["ocnli"][1]),
    **{n: _entry(CLASSIFICATION, read_classification, n, _CLASSIFICATION_FILES[n][1])
       for n in _CLASSIFICATION_FILES},
    "scifact": _entry(RETRIEVAL, read_retrieval, "scifact", ("train", "test")),
    "cmrc2018": _entry(RETRIEVAL, read_retrieval, "cmrc2018", ("trial", "dev")),
    "trecqa": _entry(RETRIEVAL, read_retrieval, "trecqa", ("train", "dev", "test")),
}


def read_shared(name: str, split: str, counter: SkipCounter | None = None, max_chars: int | None = None) -> list:
    """Training samples of a registered shared dataset (config source "shared:<name>").

    `max_chars` truncates the cmrc2018 contexts (see read_reading_comprehension); other sets refuse it."""
    if name not in SHARED_DATASETS:
        raise UsageError(f"unknown shared dataset {name!r}; available: {sorted(SHARED_DATASETS)}")
    entry = SHARED_DATASETS[name]
    if split not in entry.splits:
        raise UsageError(f"shared:{name}: unknown split {split!r}; available: {list(entry.splits)}")
    if max_chars is not None:
        if name != "cmrc2018":
            raise UsageError(f"shared:{name}: max_chars only applies to shared:cmrc2018 (context truncation)")
        return read_reading_comprehension(name, split, counter, max_context_chars=max_chars)
    return entry.read(split, counter)
