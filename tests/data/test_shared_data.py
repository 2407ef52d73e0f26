"""Shared-data adapters on the real files; expected counts are those documented in the data README/SOURCE.txt."""
import collections
from pathlib import Path

import pytest

from qzhou_jax.data import shared_data as sd
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import ClassificationSample, PairScoreSample, RetrievalSample
from qzhou_jax.data.transforms import READING_COMPREHENSION_JOINER


def test_data_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(sd.DATA_DIR_ENV, raising=False)
    repo_root = Path(sd.__file__).resolve().parents[2]
    assert sd.data_dir() == (repo_root.parent / "shared" / "data").resolve()
    monkeypatch.setenv(sd.DATA_DIR_ENV, str(tmp_path))
    assert sd.data_dir() == tmp_path


@pytest.mark.parametrize("name, split, n", [
    ("stsb", "train", 5749), ("stsb", "dev", 1500), ("stsb", "test", 1379),
    ("sickr", "train", 4500), ("sickr", "trial", 500), ("sickr", "test", 4927),
    ("atec", "valid", 20000), ("atec", "test", 20000), ("lcqmc", "dev", 8802), ("lcqmc", "test", 12500),
])
def test_sts_counts(shared_dir, name, split, n):
    samples = sd.read_sts(name, split)
    assert len(samples) == n
    assert all(isinstance(s, PairScoreSample) and s.text_a and s.text_b for s in samples)
    lo, hi = {"sickr": (1.0, 5.0), "stsb": (0.0, 5.0)}.get(name, (0.0, 1.0))
    assert all(lo <= s.score <= hi for s in samples)


def test_sts_values(shared_dir):
    assert sd.read_sts("stsb", "train")[0] == PairScoreSample("A plane is taking off.", "An air plane is taking off.", 5.0)
    assert sd.read_sts("sickr", "train")[0].score == 4.5
    atec = sd.read_sts("atec", "test")
    assert sum(s.score for s in atec) == 3610  # label 1 count from SOURCE.txt
    assert sum(s.score for s in sd.read_sts("lcqmc", "test")) == 6250


def test_nli(shared_dir):
    counter = SkipCounter()
    dev = sd.read_nli("ocnli", "dev", counter)
    assert len(dev) == 2950 and counter.counts["ocnli"] == {"no consensus label '-'": 50}
    scores = collections.Counter(s.score for s in dev)
    assert scores == {1.0: 1103, 2.0: 947, 0.0: 900}  # neutral / entailment / contradiction
    train_counter = SkipCounter()
    assert len(sd.read_nli("ocnli", "train", train_counter)) + train_counter.total() == 3000
    sick = sd.read_nli("sickr", "test")
    assert len(sick) == 4927 and set(s.score for s in sick) == {0.0, 1.0, 2.0}


@pytest.mark.parametrize("name, split, n, labels", [
    ("banking77", "train", 10003, 77), ("banking77", "test", 3080, 77), ("trec", "train", 5452, 6),
    ("trec", "test", 500, 6), ("sst2", "train", 6920, 2), ("sst2", "dev", 872, 2), ("sst2", "test", 1821, 2),
    ("waimai", "all", 11987, 2),
])
def test_classification_counts(shared_dir, name, split, n, labels):
    samples = sd.read_classification(name, split)
    assert len(samples) == n and len({s.label for s in samples}) == labels
    assert all(isinstance(s, ClassificationSample) and s.text for s in samples)


def test_classification_values(shared_dir):
    assert sd.read_classification("banking77", "train")[0] == ClassificationSample("I am still waiting on my card?",
                                                                                   "card_arrival")
    trec = collections.Counter(s.label for s in sd.read_classification("trec", "train"))  # Latin-1 file
    assert trec == {"DESC": 1162, "ENTY": 1250, "ABBR": 86, "HUM": 1223, "LOC": 835, "NUM": 896}
    assert collections.Counter(s.label for s in sd.read_classification("sst2", "test")) == {"negative": 912,
                                                                                             "positive": 909}
    assert collections.Counter(s.label for s in sd.read_classification("waimai", "all")) == {"positive": 4000,
                                                                                              "negative": 7987}


def test_scifact_beir_and_training_samples(shared_dir):
    corpus, queries, qrels = sd.read_beir("scifact", "test")
    assert len(corpus) == 5183 and len(queries) == 1109
    assert len(qrels) == 300 and sum(map(len, qrels.values())) == 339
    train = sd.read_retrieval("scifact", "train")
    _, _, train_qrels = sd.read_beir("scifact", "train")
    assert len(train_qrels) == 809 and len(train) == 919
    assert queries["0"] == train[0].query == "0-dimensional biomaterials lack inductive properties."
    assert train[0].positive == corpus["31715818"] and all(isinstance(s, RetrievalSample) for s in train)


def test_cmrc2018(shared_dir):
    counter = SkipCounter()
    trial = sd.read_reading_comprehension("cmrc2018", "trial", counter)
    assert len(trial) + counter.total() == 1002 and counter.total() == 2  # two empty questions in the file
    dev = sd.read_reading_comprehension("cmrc2018", "dev")
    assert len(dev) == 3219
    assert all(READING_COMPREHENSION_JOINER in s.query and s.positive for s in dev)


def test_trecqa(shared_dir):
    for split, questions, pairs in [("train", 93, 4718), ("dev", 81, 1148), ("test", 95, 1517)]:
        groups = sd.read_answer_selection("trecqa", split)
        assert len(groups) == questions
        assert sum(len(g.positives) + len(g.negatives) for g in groups) == pairs
    groups = sd.read_answer_selection("trecqa", "train")
    counter = SkipCounter()
    samples = sd.read_retrieval("trecqa", "train", counter)
    assert len(samples) == sum(len(g.positives) for g in groups)
    assert counter.total() == sum(1 for g in groups if not g.positives)
    first = groups[0]
    assert samples[0] == RetrievalSample(first.question, first.positives[0], first.negatives)


def test_registry_covers_every_training_set(shared_dir):
    assert set(sd.SHARED_DATASETS) == {"stsb", "sickr", "sickr_nli", "atec", "lcqmc", "ocnli", "scifact",
                                       "cmrc2018", "trecqa", "banking77", "trec", "sst2", "waimai"}
    assert len(sd.read_shared("sickr_nli", "trial")) == 500
    with pytest.raises(ValueError, match="unknown split 'train'"):
        sd.read_shared("atec", "train")


def test_bad_rows_in_a_copied_set(tmp_path, monkeypatch):
    (tmp_path / "lcqmc").mkdir()
    (tmp_path / "lcqmc" / "dev.txt").write_text("a\tb\t1\nc\td\nx\ty\tmaybe\ne\tf\t0\n", encoding="utf-8")
    monkeypatch.setenv(sd.DATA_DIR_ENV, str(tmp_path))
    path = tmp_path / "lcqmc" / "dev.txt"
    with pytest.raises(DataError, match=rf"^{path}:2: expected 3 tab-separated fields, got 2$"):
        sd.read_sts("lcqmc", "dev")
    counter = SkipCounter(skip_invalid=True)
    assert sd.read_sts("lcqmc", "dev", counter) == [PairScoreSample("a", "b", 1.0), PairScoreSample("e", "f", 0.0)]
    assert counter.total("lcqmc") == 2
    assert f"{path}:3: field 'score' has unknown label 'maybe'" in counter.report()


def test_missing_folder_message(tmp_path, monkeypatch):
    monkeypatch.setenv(sd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="QZHOU_DATA_DIR"):
        sd.read_sts("stsb", "test")


def test_cmrc2018_context_truncation_keeps_the_question(shared_dir):
    full = sd.read_reading_comprehension("cmrc2018", "dev")
    cut = sd.read_shared("cmrc2018", "dev", max_chars=50)
    assert len(cut) == len(full)
    for f, c in zip(full[:50], cut[:50]):
        context, question = f.query.split(READING_COMPREHENSION_JOINER)
        assert c.query == context[:50].rstrip() + READING_COMPREHENSION_JOINER + question
    with pytest.raises(ValueError, match="only applies to shared:cmrc2018"):
        sd.read_shared("stsb", "train", max_chars=10)
