import collections

import ml_collections
import numpy as np
import pytest

from qzhou_jax.data.errors import DataError
from qzhou_jax.data.pipeline import build_pipeline, load_datasets, mixture_info
from qzhou_jax.data.spec import DataConfig

WORDS = "cat dog bird fish red blue green big small one two three four five six seven eight nine ten".split()


def sentence(rng, n=None):
    return " ".join(rng.choice(WORDS, size=n or int(rng.integers(1, 9))))


@pytest.fixture
def files(tmp_path, write_jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    write_jsonl(tmp_path / "ret.jsonl.gz", [
        {"query": sentence(rng), "pos": [sentence(rng) for _ in range(1 + i % 2)],
         "neg": [sentence(rng) for _ in range(i % 5)]} for i in range(40)], gz=True)  # 60 (query, pos) samples
    pq.write_table(pa.table({"s1": [sentence(rng) for _ in range(30)], "s2": [sentence(rng) for _ in range(30)],
                             "gold": rng.uniform(0, 5, 30)}), tmp_path / "sts.parquet")
    write_jsonl(tmp_path / "cls.jsonl", [{"text": sentence(rng), "label": ["a", "b", "c"][i % 3]}
                                         for i in range(45)])
    return tmp_path


def config(files, **overrides):
    data = ml_collections.ConfigDict()
    data.datasets = [
        dict(name="ret", source=f"jsonl:{files}/ret.jsonl.gz", task="retrieval", num_negatives=2,
             instruction="find the passage"),
        dict(name="sts", source=f"parquet:{files}/sts.parquet", task="pair_score",
             fields=dict(text_a="s1", text_b="s2", score="gold"), instruction="same meaning"),
        dict(name="cls", source=f"jsonl:{files}/cls.jsonl", task="classification", num_negatives=3,
             instruction="classify"),
    ]
    data.defaults = dict(max_len_query=8, max_len_passage=6)
    data.alpha = 0.5
    data.batch_size = dict(retrieval=4, pair_score=6, classification=4)
    data.buckets = (4, 8)
    data.seed = 0
    data.num_threads = 2
    data.update(overrides)
    return data


def test_info_sizes_and_probabilities(files):
    info = mixture_info(config(files))
    assert info.names == ["ret", "sts", "cls"] and info.tasks == ["retrieval", "pair_score", "classification"]
    assert info.sizes == [60, 30, 45]  # one sample per positive; own pairs, not the both_directions copies
    mass = np.sqrt([60, 30, 45])
    np.testing.assert_allclose(info.probabilities, mass / mass.sum())
    assert info.num_candidates == [3, 1, 4] and info.label_vocabularies[2] == {"a": 0, "b": 1, "c": 2}
    assert "ret" in info.table()


def test_batches_have_the_layout(files, tokenizer):
    dataset, info = build_pipeline(config(files), tokenizer, process_index=0, process_count=2)
    it = iter(dataset)
    seen = collections.Counter()
    for _ in range(30):
        b = next(it)
        d = int(b["dataset_id"][0])
        seen[d] += 1
        assert (b["dataset_id"] == d).all()
        B, C = info.batch_sizes[d] // 2, info.num_candidates[d]
        assert b["anchor_ids"].shape[0] == B and b["cand_ids"].shape[:2] == (B, C)
        assert b["anchor_ids"].shape[1] in (4, 8) and b["cand_ids"].shape[2] in (4, 6)
        assert b["labels"].shape == (B, 1 + C) and b["cand_valid"].shape == (B, C)
        first_word = tokenizer.convert_ids_to_tokens(int(b["anchor_ids"][0, 0]))
        assert first_word == "Instruct:"
        if info.tasks[d] == "pair_score":
            assert (b["score"] >= 0).all() and (b["score"] <= 5).all() and (b["labels"] == -1).all()
        elif info.tasks[d] == "classification":
            assert (b["labels"] >= 0).all() and (b["labels"][:, 0] == b["labels"][:, 1]).all()
            assert (b["labels"][:, 2:] != b["labels"][:, :1]).all()
        else:
            assert (b["score"] == 0).all() and b["cand_valid"][:, 0].all()
    assert set(seen) == {0, 1, 2}


def test_exact_resume_with_grain_state(files, tokenizer):
    cfg = config(files)
    dataset, _ = build_pipeline(cfg, tokenizer, process_index=1, process_count=2, seed=3)
    it = iter(dataset)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(12)]
    fresh, _ = build_pipeline(cfg, tokenizer, process_index=1, process_count=2, seed=3)
    restored = iter(fresh)
    restored.set_state(state)
    for a, b in zip(expected, (next(restored) for _ in range(12))):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_hosts_pick_the_same_dataset_with_disjoint_samples(files):
    cfg = config(files)
    hosts = []
    for h in (0, 1):
        dataset, _ = build_pipeline(cfg, None, process_index=h, process_count=2)
        it = iter(dataset)
        hosts.append([next(it) for _ in range(40)])
    for b0, b1 in zip(*hosts):
        np.testing.assert_array_equal(b0["dataset_id"], b1["dataset_id"])
        assert not set(b0["position"]) & set(b1["position"])


def test_seed_changes_the_order(files):
    orders = []
    for seed in (0, 1):
        dataset, _ = build_pipeline(config(files), None, process_index=0, process_count=1, seed=seed)
        it = iter(dataset)
        orders.append([(int(b["dataset_id"][0]), tuple(b["position"])) for b in (next(it) for _ in range(10))])
    assert orders[0] != orders[1]


def test_default_host_from_jax(files):
    _, info = build_pipeline(config(files), None)
    assert info.process_count == 1


def test_max_examples_is_a_seeded_subset(files):
    cfg = config(files)
    cfg.datasets[2]["max_examples"] = 12
    (ret, sts, cls), _ = load_datasets(cfg)
    assert len(cls.samples) == 12
    assert [s.text for s in cls.samples] == [s.text for s in load_datasets(cfg)[0][2].samples]
    cfg.datasets[1]["max_examples"] = 5
    assert len(load_datasets(cfg)[0][1].samples) == 10  # 5 pairs, both directions


def test_bad_rows_strict_and_skipped(files, write_jsonl, tokenizer):
    write_jsonl(files / "ret.jsonl.gz", [{"query": "cat", "pos": ["dog"]}, {"query": "fish", "pos": []},
                                         "{not json", {"query": "bird", "pos": ["sky"], "neg": ["sea"]}], gz=True)
    with pytest.raises(DataError, match=rf"^{files}/ret.jsonl.gz:2: field 'pos' is empty$"):
        mixture_info(config(files))
    # 2 samples left: a global batch of 2 is the most that holds no sample twice
    dataset, info = build_pipeline(config(files, skip_invalid=True, batch_size=dict(retrieval=2),
                                          max_skipped_fraction=0.5), tokenizer,
                                   process_index=0, process_count=1)  # 2 bad rows of 4: above the 1% default
    assert info.sizes[0] == 2 and info.skipped.total("ret") == 2
    report = info.skipped.report()
    assert "ret: 2 rows skipped" in report and "malformed JSON" in report
    next(iter(dataset))


def test_unknown_classification_label_without_partner(files, write_jsonl):
    write_jsonl(files / "cls.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"},
                                      {"text": "c", "label": "lonely"}])
    with pytest.raises(DataError, match="label 'lonely' has a single text"):
        mixture_info(config(files))
    info = mixture_info(config(files, skip_invalid=True))
    assert info.sizes[2] == 2 and info.skipped.total("cls") == 1


def test_max_examples_singleton_labels_are_counted_not_fatal(files, write_jsonl):
    # 20 texts of label x, one each of labels y0..y9: a 12-row slice often leaves some label alone.
    rows = [{"text": f"x {i}", "label": "x"} for i in range(20)]
    rows += [{"text": f"y {i} {j}", "label": f"y{i}"} for i in range(10) for j in range(2)]
    write_jsonl(files / "cls.jsonl", rows)
    cfg = config(files).to_dict()
    cfg["datasets"][2]["max_examples"] = 12
    info = mixture_info(cfg)
    from qzhou_jax.data.transforms import LabelIndex
    from qzhou_jax.data.pipeline import load_datasets
    datasets, counter = load_datasets(cfg)
    kept = datasets[2].samples
    assert not LabelIndex(kept).singleton_labels()
    assert info.sizes[2] == len(kept) and len(kept) + counter.total("cls") == 12
    assert counter.total("cls") > 0 and "single text" in counter.report()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["datasets"][0].update(instrution="x"), r"config.data.datasets\[0\] \('ret'\): unknown field"),
    (lambda d: d["datasets"][0].pop("task"), "field 'task' is missing"),
    (lambda d: d["datasets"][0].update(source="csv:x.csv"), "must be '<kind>:<location>'"),
    (lambda d: d["datasets"][0].update(source="shared:nope"), "unknown shared dataset 'nope'"),
    (lambda d: d["datasets"][0].update(source="shared:stsb"), "shared:stsb is 'pair_score' data, not 'retrieval'"),
    (lambda d: d["datasets"][0].update(task="ranking"), "unknown task type 'ranking'"),
    (lambda d: d["datasets"][1].update(name="ret"), "duplicate names"),
    (lambda d: d["datasets"][0].update(num_negatives=-1), "field 'num_negatives' = -1 is invalid"),
    (lambda d: d.update(batch_size=dict(ranking=4)), "unknown task types"),
])
def test_config_errors(files, change, message):
    cfg = config(files).to_dict()
    change(cfg)
    with pytest.raises(Exception, match=message):
        DataConfig.from_config(cfg)


def test_batch_not_divisible_by_hosts(files):
    with pytest.raises(ValueError, match="not divisible by 4 hosts"):
        build_pipeline(config(files), None, process_index=0, process_count=4)


def test_beir_and_hf_disk_sources(tmp_path, write_jsonl, tokenizer):
    import datasets

    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"doc {i}"} for i in range(6)])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": f"q{i}", "text": f"query {i}"} for i in range(6)])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                                   "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    datasets.Dataset.from_list([{"premise": f"p {i}", "hypothesis": f"h {i}", "label": i % 3}
                                for i in range(9)]).save_to_disk(str(tmp_path / "nli"))
    cfg = dict(datasets=[
        dict(name="beir", source=f"beir:{tmp_path}", split="train", num_negatives=1),
        dict(name="nli", source=f"hf_disk:{tmp_path}/nli", task="pair_score", transform="nli",
             fields=dict(text_a="premise", text_b="hypothesis"), label_names=["entailment", "neutral", "contradiction"]),
    ], batch_size=dict(retrieval=2, pair_score=2), alpha=1.0)
    (beir, nli), _ = load_datasets(cfg)
    assert len(beir.samples) == 6 and beir.samples[0].query == "query 0" and beir.samples[0].positive == "doc 0"
    assert [s.score for s in nli.samples[:6]] == [2.0, 2.0, 1.0, 1.0, 0.0, 0.0]
    dataset, info = build_pipeline(cfg, tokenizer, process_index=0, process_count=1)
    np.testing.assert_allclose(info.probabilities, [6 / 15, 9 / 15])  # n_i: 9 own NLI pairs, not 18
    assert next(iter(dataset))["anchor_ids"].shape[0] == 2
