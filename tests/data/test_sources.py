import numpy as np
import pytest

from qzhou_jax.data import sources
from qzhou_jax.data.adapters import samples_from_rows
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import PairScoreSample, RetrievalSample

ROWS = [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]} for i in range(5)]


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_plain_and_gzip(tmp_path, write_jsonl, gz):
    path = write_jsonl(tmp_path / ("x.jsonl.gz" if gz else "x.jsonl"), [ROWS[0], "", ROWS[1]], gz=gz)
    rows = list(sources.read_jsonl(path))
    assert [r.fields for r in rows] == ROWS[:2]
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:3"]


def test_jsonl_malformed_lines(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], '{"query": "q1", "pos": [', "[1, 2]", ROWS[3]])
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON"):
        list(sources.read_jsonl(path))
    counter = SkipCounter(skip_invalid=True)
    rows = list(sources.read_jsonl(path, lambda e: counter.invalid("bad", e)))
    assert [r.fields["query"] for r in rows] == ["q0", "q3"]
    assert counter.total("bad") == 2
    assert any("expected a JSON object, got list" in e for e in counter.examples["bad"])


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(sources.read_jsonl(tmp_path / "nope.jsonl"))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "score": [1.0, 2.5, 5.0]})
    pq.write_table(table, tmp_path / "sts.parquet")
    rows = list(sources.read_parquet(tmp_path / "sts.parquet", batch_size=2))
    assert [r.where for r in rows] == [f"{tmp_path / 'sts.parquet'}:row {i}" for i in range(3)]
    samples = samples_from_rows(rows, "sts")
    assert samples == [PairScoreSample("a", "x", 1.0), PairScoreSample("b", "y", 2.5), PairScoreSample("c", "z", 5.0)]


def test_hf_disk(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS),
        "test": datasets.Dataset.from_list(ROWS[:2]),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    rows = list(sources.read_hf_disk(tmp_path / "hf", "test"))
    assert samples_from_rows(rows, "retrieval") == [RetrievalSample(f"q{i}", f"p{i}", (f"n{i}",)) for i in range(2)]
    assert rows[1].where == f"{tmp_path / 'hf'}[test]:row 1"
    with pytest.raises(DataError, match=r"split 'dev' not found; available: \['test', 'train'\]"):
        list(sources.read_hf_disk(tmp_path / "hf", "dev"))


def test_tfds_mock_data_source(tmp_path):
    import tensorflow_datasets as tfds

    class QzhouToyPairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(), "label": np.float32}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"sentence1": "a", "sentence2": "b", "label": 1.0}

    records = [{"sentence1": b"s1 number %d" % i, "sentence2": "s2 %d" % i, "label": np.float32(i % 6)}
               for i in range(6)]
    records[5]["label"] = np.float32(9.0)  # outside 0..5
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
        rows = list(sources.read_tfds("qzhou_toy_pairs", "train", data_dir=str(tmp_path)))
    assert len(rows) == 6 and rows[2].where == "tfds:qzhou_toy_pairs/train:row 2"
    counter = SkipCounter(skip_invalid=True)
    samples = samples_from_rows(rows, "sts", {"score": "label"}, invalid=lambda e: counter.invalid("toy", e))
    assert samples == [PairScoreSample(f"s1 number {i}", f"s2 {i}", float(i)) for i in range(5)]
    assert counter.counts["toy"] == {"field 'label' = 9.0 is outside [0.0, 5.0]": 1}

    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):  # random features
        rows = list(sources.read_tfds("qzhou_toy_pairs", "train", data_dir=str(tmp_path)))
    assert len(rows) == 4 and set(rows[0].fields) == {"sentence1", "sentence2", "label"}


def _beir(tmp_path, write_jsonl, qrels):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "T1", "text": "body one"},
                                            {"_id": "d2", "title": "", "text": "body two"},
                                            {"_id": "d3", "title": "T3", "text": "body three"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}])
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return tmp_path


def test_beir_folder(tmp_path, write_jsonl):
    from qzhou_jax.data.shared_data import beir_samples

    folder = _beir(tmp_path, write_jsonl, "q1\td1\t1\nq1\td3\t0\nq2\td2\t2\nq2\td1\t1\n")
    corpus, queries, qrels = sources.read_beir_folder(folder, "train")
    assert corpus == {"d1": "T1 body one", "d2": "body two", "d3": "T3 body three"}
    assert queries == {"q1": "first?", "q2": "second?"}
    assert qrels == {"q1": {"d1": 1, "d3": 0}, "q2": {"d2": 2, "d1": 1}}
    assert beir_samples(sources.read_beir_folder(folder, "train")) == [
        RetrievalSample("first?", "T1 body one", ("T3 body three",)),
        RetrievalSample("second?", "body two"), RetrievalSample("second?", "T1 body one")]


@pytest.mark.parametrize("qrels, message", [
    ("q9\td1\t1\n", "train.tsv:3: field 'query-id' names unknown query 'q9'"),
    ("q1\td9\t1\n", "train.tsv:3: field 'corpus-id' names unknown document 'd9'"),
    ("q1\td1\n", "train.tsv:3: expected 3 tab-separated fields"),
    ("q1\td1\thigh\n", "train.tsv:3: field 'score' must be an integer"),
])
def test_beir_bad_qrels(tmp_path, write_jsonl, qrels, message):
    folder = _beir(tmp_path, write_jsonl, "q1\td1\t1\n" + qrels)
    with pytest.raises(DataError, match=message.replace("\t", r"\t")) as err:
        sources.read_beir_folder(folder, "train")
    assert err.value.where == f"{folder / 'qrels' / 'train.tsv'}:3"
    counter = SkipCounter(skip_invalid=True)
    beir = sources.read_beir_folder(folder, "train", lambda e: counter.invalid("b", e))
    assert beir.qrels == {"q1": {"d1": 1}} and counter.total("b") == 1
