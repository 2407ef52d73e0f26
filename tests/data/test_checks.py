"""Bad data is loud: too many skipped rows stop the load, a non-UTF-8 byte names its line, degenerate datasets
are refused with the reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qzhou_jax.data import pipeline
from qzhou_jax.data.checks import DatasetRefused
from qzhou_jax.data.errors import DataError


def _jsonl(path, rows):
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows))
    return path


def _load(path, task, **data):
    kind = "parquet" if str(path).endswith(".parquet") else "jsonl"
    config = dict(datasets=[dict(name="mine", source=f"{kind}:{path}", task=task)], **data)
    return pipeline.load_datasets(config)


def _classification(n, labels=("a", "b")):
    return [{"text": f"text {i}", "label": labels[i % len(labels)]} for i in range(n)]


def test_too_many_skipped_rows_stop_the_load(tmp_path):
    rows = _classification(10) + [{"text": f"t{i}"} for i in range(110)]  # 110 of 120 lack the label
    path = _jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DatasetRefused, match=r"110 malformed rows skipped against 10 samples kept \(91.7%\), above "
                                             r"data.max_skipped_fraction = 0.01: 110 x field 'label' is missing"):
        _load(path, "classification", skip_invalid=True)
    datasets, counter = _load(path, "classification", skip_invalid=True, max_skipped_fraction=0.95)
    assert len(datasets[0].samples) == 10
    assert "mine: 110 rows skipped" in counter.report() and "field 'label' is missing" in counter.report()


def test_non_utf8_byte_names_file_and_line_and_can_be_skipped(tmp_path):
    rows = _classification(200)
    rows.insert(2, b'{"text": "caf\xe9", "label": "a"}\n')  # Latin-1 in a UTF-8 file, on line 3
    path = _jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xe9"):
        _load(path, "classification")
    datasets, counter = _load(path, "classification", skip_invalid=True)
    assert len(datasets[0].samples) == 200 and counter.total("mine") == 1


@pytest.mark.parametrize("rows,task,reason", [
    (_classification(20, labels=("only",)), "classification",
     r"classification needs at least 2 labels, found \[.only.\]"),
    ([{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": 3.0} for i in range(20)], "pair_score",
     r"all 20 pair scores equal 3.0"),
])
def test_degenerate_datasets_are_refused(tmp_path, rows, task, reason):
    with pytest.raises(DatasetRefused, match=reason):
        _load(_jsonl(tmp_path / "d.jsonl", rows), task)


def test_list_labels_are_an_error_naming_the_field(tmp_path):
    rows = _classification(4) + [{"text": "two labels", "label": ["a", "b"]}]
    with pytest.raises(DataError, match=r":5: field 'label' is a list"):
        _load(_jsonl(tmp_path / "c.jsonl", rows), "classification")


def test_parquet_skip_leaving_nothing_names_the_missing_field(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(5)], "category": ["a", "b"] * 2 + ["a"]}), path)
    with pytest.raises(DatasetRefused, match=r"no samples left \(5 x field 'label' is missing\)"):
        _load(path, "classification", skip_invalid=True, max_skipped_fraction=1.0)
