"""Local tasks on the real shared data, with fake encoders: prompt sides, instruction overrides, subsampling, and
scores checked against references computed here (scipy/sklearn, or oracle encoders whose right answer is known)."""
import json
import zlib

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import average_precision_score
from sklearn.metrics.pairwise import paired_cosine_distances

from qzhou_jax.data import shared_data
from qzhou_jax.eval import metrics, tasks
from qzhou_jax.eval.mteb_adapter import DEFAULT_INSTRUCTIONS

DIM = 64


def _vector(key: str, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(key.encode())).normal(size=dim)


class Recorder:
    """Records every (text, instruction); embeds each text by a fixed random vector (or `embed(text)`)."""

    def __init__(self, embed=None):
        self.calls = []
        self.embed = embed or _vector

    def encode(self, texts, instruction=None):
        self.calls += [(t, instruction) for t in texts]
        out = np.stack([self.embed(t) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def instructions_of(self, texts) -> set:
        texts = set(texts)
        return {i for t, i in self.calls if t in texts}


def bag_of_words(text: str) -> np.ndarray:
    """Lexical features: word and character hashes. Correlates with STS gold, unlike random vectors."""
    v = np.full(512, 1e-3)
    for w in text.lower().split():
        v[zlib.crc32(w.encode()) % 512] += 1.0
    for c in text:
        v[zlib.crc32(c.encode()) % 512] += 0.3
    return v


# ------------------------------------------------------------------------------------------ registry
def test_registry_lists_the_local_tasks_with_mteb_main_metrics():
    expected = {"STSBenchmark": "cosine_spearman", "SICK-R": "cosine_spearman", "ATEC": "cosine_spearman",
                "LCQMC": "cosine_spearman", "Ocnli": "cosine_ap", "SciFact": "ndcg_at_10",
                "Banking77Classification": "accuracy", "TRECClassification": "accuracy",
                "SST2Classification": "accuracy", "Waimai": "accuracy", "Banking77Clustering": "v_measure",
                "TrecQAReranking": "map"}
    assert {t.name: t.main_metric for t in tasks.get_tasks("all")} == expected
    for name in expected:
        if name in DEFAULT_INSTRUCTIONS:
            assert tasks.get_task(name).instruction == DEFAULT_INSTRUCTIONS[name]
    assert [t.name for t in tasks.get_tasks(" SciFact, ATEC ")] == ["SciFact", "ATEC"]


def test_bad_task_split_and_max_examples_are_named():
    with pytest.raises(KeyError, match="STSBenchmarkk"):
        tasks.get_tasks("STSBenchmarkk")
    with pytest.raises(ValueError, match="twice"):
        tasks.get_tasks("ATEC,ATEC")
    with pytest.raises(ValueError, match=r"Ocnli: no split 'test'.*\['dev', 'train'\]"):
        tasks.get_task("Ocnli").run(Recorder(), "test")
    with pytest.raises(ValueError, match="max_examples"):
        tasks.get_task("ATEC").run(Recorder(), max_examples=-1)


# ------------------------------------------------------------------------------------------ subsample
def test_subsample_is_deterministic_sorted_and_keeps_every_class():
    labels = np.array([0] * 95 + [1] * 5)
    a = tasks.subsample(100, 10, labels=labels)
    np.testing.assert_array_equal(a, tasks.subsample(100, 10, labels=labels))
    assert len(a) == 10 and np.all(np.diff(a) > 0)
    assert set(labels[a]) == {0, 1}
    np.testing.assert_array_equal(tasks.subsample(100, 0), np.arange(100))
    np.testing.assert_array_equal(tasks.subsample(7, 50), np.arange(7))
    b = tasks.subsample(1000, 10)
    assert len(set(b)) == 10 and not np.array_equal(b, np.arange(10))  # random, not a prefix
    with pytest.raises(ValueError):
        tasks.subsample(10, -1)


def test_max_examples_keeps_the_same_subset_every_run():
    first, second = Recorder(), Recorder()
    tasks.get_task("LCQMC").run(first, max_examples=12)
    tasks.get_task("LCQMC").run(second, max_examples=12)
    assert first.calls == second.calls and 0 < len(first.calls) <= 24


def test_waimai_split_is_fixed_disjoint_and_complete():
    all_reviews = shared_data.read_classification("waimai", "all")
    parts = {s: tasks._read_waimai(s) for s in ("train", "dev", "test")}
    assert [len(parts["test"]), len(parts["dev"])] == [2000, 1000]
    assert sum(map(len, parts.values())) == len(all_reviews)
    keys = {s: {(x.text, x.label) for x in p} for s, p in parts.items()}
    assert not keys["test"] & keys["dev"] and not keys["test"] & keys["train"]
    assert tasks._read_waimai("test") == parts["test"]
    assert {x.label for x in parts["test"]} == {"positive", "negative"}


# ------------------------------------------------------------------------------------- prompt sides
def test_symmetric_tasks_prompt_both_sides():
    for name in ("STSBenchmark", "Ocnli", "SST2Classification", "Banking77Clustering"):
        rec = Recorder()
        task = tasks.get_task(name)
        task.run(rec, max_examples=10)
        assert {i for _, i in rec.calls} == {task.instruction}, name
    rec = Recorder()
    tasks.get_task("ATEC").run(rec, max_examples=5)
    pairs = shared_data.read_sts("atec", "test")
    keep = tasks.subsample(len(pairs), 5)
    assert {t for t, _ in rec.calls} == {x for i in keep for x in (pairs[i].text_a, pairs[i].text_b)}


def test_retrieval_prompts_queries_only():
    rec = Recorder()
    tasks.get_task("SciFact").run(rec, max_examples=6)
    corpus, queries, qrels = shared_data.read_beir("scifact", "test")
    prompted = {t for t, i in rec.calls if i == DEFAULT_INSTRUCTIONS["SciFact"]}
    plain = {t for t, i in rec.calls if i is None}
    assert len(prompted) == 6 and prompted <= set(queries.values())
    assert plain <= set(corpus.values()) and 6 <= len(plain) <= 6 * tasks.MAX_CORPUS_PER_QUERY
    assert {t for t, _ in rec.calls} == prompted | plain


def test_reranking_prompts_questions_only():
    rec = Recorder()
    tasks.get_task("TrecQAReranking").run(rec, max_examples=4)
    groups = [g for g in shared_data.read_answer_selection("trecqa", "test") if g.positives and g.negatives]
    questions = {g.question for g in groups}
    assert rec.instructions_of(questions) == {tasks.EXTRA_INSTRUCTIONS["TrecQAReranking"]}
    answers = {t for t, _ in rec.calls} - questions
    assert answers and rec.instructions_of(answers) == {None}


def test_instructions_json_overrides_and_null_disables(tmp_path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps({"STSBenchmark": "Compare meaning", "SciFact": None, "NotLocal": "ignored"}))
    sts, scifact = tasks.get_tasks("STSBenchmark,SciFact", instructions=path)
    rec = Recorder()
    sts.run(rec, max_examples=4)
    scifact.run(rec, max_examples=2)
    assert {i for _, i in rec.calls} == {"Compare meaning", None}
    assert sum(i is None for _, i in rec.calls) == len(rec.calls) - 8  # the 4 STS pairs = 8 prompted texts
    bad = tmp_path / "bad.json"
    bad.write_text('{"STSBenchmark": 3}')
    with pytest.raises(ValueError, match="bad.json"):
        tasks.get_tasks("STSBenchmark", instructions=bad)


# ------------------------------------------------------------------------------- scores vs references
def test_sts_matches_scipy_on_the_full_test_set():
    result = tasks.get_task("STSBenchmark").run(Recorder(bag_of_words))
    pairs = shared_data.read_sts("stsb", "test")
    a = np.stack([bag_of_words(p.text_a) for p in pairs])
    b = np.stack([bag_of_words(p.text_b) for p in pairs])
    cos = 1 - paired_cosine_distances(a, b)
    gold = [p.score for p in pairs]
    assert result["n_examples"] == 1379
    assert result["main_score"] == result["cosine_spearman"]
    assert result["cosine_spearman"] == pytest.approx(scipy.stats.spearmanr(gold, cos)[0], abs=1e-5)
    assert result["cosine_pearson"] == pytest.approx(scipy.stats.pearsonr(gold, cos)[0], abs=1e-5)
    assert result["main_score"] > 0.3  # word overlap tracks similarity: the pairs are aligned with their scores
    assert abs(tasks.get_task("STSBenchmark").run(Recorder())["main_score"]) < 0.1  # random vectors do not


def test_ocnli_is_entailment_vs_rest_average_precision():
    result = tasks.get_task("Ocnli").run(Recorder(bag_of_words))
    pairs = shared_data.read_nli("ocnli", "dev")
    cos = 1 - paired_cosine_distances(np.stack([bag_of_words(p.text_a) for p in pairs]),
                                      np.stack([bag_of_words(p.text_b) for p in pairs]))
    labels = [p.score == 2.0 for p in pairs]
    assert result["main_score"] == pytest.approx(average_precision_score(labels, cos), abs=1e-5)
    assert result["n_examples"] == len(pairs)


def _scifact_oracle():
    """Queries embed as the sum of their relevant documents' vectors: every relevant doc must rank first."""
    corpus, queries, qrels = shared_data.read_beir("scifact", "test")
    by_text = {text: _vector(doc_id, 256) for doc_id, text in corpus.items()}
    for qid, judged in qrels.items():
        by_text[queries[qid]] = sum(_vector(d, 256) for d, rel in judged.items() if rel > 0)
    return Recorder(lambda t: by_text[t])


@pytest.mark.parametrize("max_examples", [0, 25])
def test_retrieval_with_an_oracle_encoder_is_perfect(max_examples):
    result = tasks.get_task("SciFact").run(_scifact_oracle(), max_examples=max_examples)
    assert result["n_examples"] == (300 if max_examples == 0 else 25)
    assert result["ndcg_at_10"] == pytest.approx(1.0) and result["recall_at_100"] == pytest.approx(1.0)
    if max_examples == 0:
        assert result["n_corpus"] == 5183
    random_result = tasks.get_task("SciFact").run(Recorder(lambda t: _vector(t, 256)), max_examples=max_examples)
    assert random_result["ndcg_at_10"] < 0.2


def test_classification_with_label_encoder_is_perfect_and_encodes_only_drawn_texts():
    train = shared_data.read_classification("trec", "train")
    test = shared_data.read_classification("trec", "test")
    label_of = {s.text: s.label for s in train + test}
    rec = Recorder(lambda t: _vector(label_of[t]) + 0.01 * _vector(t))
    result = tasks.get_task("TRECClassification").run(rec)
    assert result["accuracy"] == pytest.approx(1.0) and result["main_score"] == result["accuracy"]
    train_encoded = {t for t, _ in rec.calls} - {s.text for s in test}
    assert train_encoded <= {s.text for s in train}
    assert len(train_encoded) <= result["n_train_encoded"] <= 10 * 8 * 6 < len(train)  # (repeated texts: fewer)


def test_classification_equals_mteb_protocol_on_the_whole_train_set():
    # The task encodes only the undersampled training texts; the metric on every text must agree.
    result = tasks.get_task("TRECClassification").run(Recorder(bag_of_words))
    train = shared_data.read_classification("trec", "train")
    test = shared_data.read_classification("trec", "test")
    def unit(texts):
        x = np.stack([bag_of_words(t) for t in texts])
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ref = metrics.classification_metrics(unit([s.text for s in train]), [s.label for s in train],
                                         unit([s.text for s in test]), [s.label for s in test])
    for key in ("accuracy", "f1", "f1_weighted"):
        assert result[key] == pytest.approx(ref[key], abs=1e-6)


def test_waimai_runs_on_its_seeded_split():
    texts = {s.text: s.label for s in shared_data.read_classification("waimai", "all")}
    rec = Recorder(lambda t: _vector(texts[t]) + 0.01 * _vector(t))
    result = tasks.get_task("Waimai").run(rec, max_examples=40)
    assert result["accuracy"] == pytest.approx(1.0) and result["n_examples"] == 40


def test_clustering_separates_label_clusters_and_not_random_vectors():
    samples = shared_data.read_classification("banking77", "test")
    label_of = {s.text: s.label for s in samples}
    task = tasks.get_task("Banking77Clustering")
    result = task.run(Recorder(lambda t: _vector(label_of[t]) + 0.05 * _vector(t)), max_examples=600)
    assert result["main_score"] == result["v_measure"] > 0.97  # mini-batch k-means may still split a cluster
    assert result["n_examples"] == 600
    assert task.run(Recorder(), max_examples=600)["v_measure"] < 0.75


def test_reranking_matches_per_question_average_precision():
    groups = shared_data.read_answer_selection("trecqa", "test")
    vec = {}
    for g in groups:  # correct answers lie near their question (unless the text is also another's answer)
        vec[g.question] = _vector(g.question)
        for p in g.positives:
            vec.setdefault(p, _vector(g.question) + 0.5 * _vector(p))
    embed = lambda t: vec.get(t, _vector(t))  # noqa: E731
    result = tasks.get_task("TrecQAReranking").run(Recorder(embed))
    usable = [g for g in groups if g.positives and g.negatives]
    aps = []
    for g in usable:
        cands = np.stack([embed(c) for c in g.positives + g.negatives])
        q = embed(g.question)
        cos = cands @ q / np.linalg.norm(cands, axis=1) / np.linalg.norm(q)
        aps.append(average_precision_score([1] * len(g.positives) + [0] * len(g.negatives), cos))
    assert result["map"] == pytest.approx(np.mean(aps), abs=1e-5) and result["map"] > 0.9
    assert result["n_examples"] == len(usable) and result["n_skipped"] == len(groups) - len(usable)
