"""Row readers for the supported storage formats; every row carries `where` for error messages.

| source       | reader                                  | `where` of a row          |
|--------------|-----------------------------------------|---------------------------|
| JSONL (.gz)  | `read_jsonl(path)`                      | "path:LINE" (1-based)     |
| Parquet      | `read_parquet(path)` (pyarrow)          | "path:row I" (0-based)    |
| HF on disk   | `read_hf_disk(path, split)` (`datasets.load_from_disk`) | "path[split]:row I" |
| TFDS         | `read_tfds(name, split, data_dir)` (`tfds.data_source`) | "tfds:name/split:row I" |
| BEIR folder  | `read_beir_folder(path, split)` -> `BeirData` (corpus.jsonl, queries.jsonl, qrels/{split}.tsv) |

Readers yield `Row(where, fields)` and stay format-only; `adapters.py` turns fields into samples. A bad row
(malformed JSON, non-object) goes to `invalid(DataError)`, which raises unless the caller counts and skips.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from qzhou_jax.data.errors import DataError

Invalid = Callable[[DataError], None]


def raise_invalid(error: DataError) -> None:
    raise error


@dataclasses.dataclass(frozen=True)
class Row:
    where: str
    fields: Mapping[str, Any]


def open_text(path: str | Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Opens plain or gzip-compressed text (by the .gz suffix); newline="" keeps csv's quoting exact."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def read_jsonl(path: str | Path, invalid: Invalid = raise_invalid) -> Iterator[Row]:
    """One JSON object per line (split on "\\n" only); blank lines are ignored. Each line is decoded on its own,
    so a non-UTF-8 byte is a bad row naming its line (skippable), not a crash of the whole file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                invalid(DataError(where, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of "
                                         f"the line)"))
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                invalid(DataError(where, f"malformed JSON ({err.msg} at column {err.colno})"))
                continue
            if not isinstance(record, dict):
                invalid(DataError(where, f"expected a JSON object, got {type(record).__name__}"))
                continue
            yield Row(where, record)


def read_parquet(path: str | Path, columns: list[str] | None = None, batch_size: int = 4096) -> Iterator[Row]:
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
        for record in batch.to_pylist():
            yield Row(f"{path}:row {i}", record)
            i += 1


def read_hf_disk(path: str | Path, split: str | None = None) -> Iterator[Row]:
    """A `datasets` Dataset or DatasetDict written by `save_to_disk` (a DatasetDict needs `split`)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise DataError(str(path), f"split {split!r} not found; available: {sorted(loaded)}")
        loaded = loaded[split]
    for i, record in enumerate(loaded):
        yield Row(f"{path}[{split}]:row {i}" if split else f"{path}:row {i}", record)


def read_tfds(name: str, split: str, data_dir: str | None = None) -> Iterator[Row]:
    """Random-access TFDS data source (ArrayRecord); needs the prepared dataset under `data_dir` (no downloads)."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    for i in range(len(source)):
        yield Row(f"tfds:{name}/{split}:row {i}", source[i])


# ---- BEIR ----

@dataclasses.dataclass
class BeirData:
    """corpus: doc id -> "title text"; queries: query id -> text; qrels: query id -> {doc id: relevance}."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    qrels_where: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict, repr=False)

    def __iter__(self):  # corpus, queries, qrels = read_beir_folder(...)
        return iter((self.corpus, self.queries, self.qrels))


def beir_text(record: Mapping[str, Any], where: str) -> str:
    """BEIR/MTEB convention: title and text joined by one space (either may be empty, not both)."""
    title = str(record.get("title") or "").strip()
    text = str(record.get("text") or "").strip()
    joined = f"{title} {text}".strip()
    if not joined:
        raise DataError(where, "fields 'title' and 'text' are both empty")
    return joined


def _beir_id(record: Mapping[str, Any], where: str) -> str:
    if record.get("_id") is None or str(record["_id"]).strip() == "":
        raise DataError(where, "field '_id' is missing")
    return str(record["_id"])


def read_beir_folder(path: str | Path, split: str, invalid: Invalid = raise_invalid) -> BeirData:
    """Reads a BEIR folder; qrels that name unknown queries/documents are bad rows."""
    path = Path(path)
    corpus, queries = {}, {}
    for row in read_jsonl(path / "corpus.jsonl", invalid):
        try:
            corpus[_beir_id(row.fields, row.where)] = beir_text(row.fields, row.where)
        except DataError as err:
            invalid(err)
    for row in read_jsonl(path / "queries.jsonl", invalid):
        try:
            text = str(row.fields.get("text") or "").strip()
            if not text:
                raise DataError(row.where, "field 'text' is missing" if "text" not in row.fields
                                else "field 'text' is empty")
            queries[_beir_id(row.fields, row.where)] = text
        except DataError as err:
            invalid(err)
    qrels: dict[str, dict[str, int]] = {}
    qrels_where = {}
    qrels_path = path / "qrels" / f"{split}.tsv"
    with open_text(qrels_path) as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            where = f"{qrels_path}:{line_no}"
            if line_no == 1 and fields and fields[0] == "query-id":
                continue
            if not fields or not "".join(fields).strip():
                continue
            try:
                if len(fields) != 3:
                    raise DataError(where, f"expected 3 tab-separated fields (query-id, corpus-id, score), "
                                           f"got {len(fields)}")
                qid, docid, score = (x.strip() for x in fields)
                if qid not in queries:
                    raise DataError(where, f"field 'query-id' names unknown query {qid!r}")
                if docid not in corpus:
                    raise DataError(where, f"field 'corpus-id' names unknown document {docid!r}")
                try:
                    rel = int(score)
                except ValueError:
                    raise DataError(where, f"field 'score' must be an integer, got {score!r}") from None
            except DataError as err:
                invalid(err)
                continue
            qrels.setdefault(qid, {})[docid] = rel
            qrels_where[(qid, docid)] = where
    return BeirData(corpus, queries, qrels, qrels_where)
