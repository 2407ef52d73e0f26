"""Metrics against scipy / scikit-learn, hand-computed trec_eval values and MTEB's own loops."""
import math

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, ndcg_score
from sklearn.metrics.pairwise import cosine_similarity, paired_cosine_distances

from qzhou_jax.eval import metrics


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------- STS
def test_cosine_helpers_match_sklearn():
    rng = _rng()
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    np.testing.assert_allclose(metrics.cosine_pairs(a, b), 1 - paired_cosine_distances(a, b), atol=1e-12)
    np.testing.assert_allclose(metrics.cosine_matrix(a, b[:4]), cosine_similarity(a, b[:4]), atol=1e-12)


def test_sts_metrics_match_scipy():
    rng = _rng(1)
    a = rng.normal(size=(50, 8))
    b = a + rng.normal(scale=1.0, size=a.shape)
    gold = rng.uniform(0, 5, size=50)
    cos = np.einsum("nd,nd->n", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    got = metrics.sts_metrics(a, b, gold)
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(gold, cos).statistic, abs=1e-12)
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(gold, cos).statistic, abs=1e-12)


def test_sts_rejects_bad_shapes():
    with pytest.raises(ValueError, match="length 3 does not match"):
        metrics.correlation_metrics([0.1, 0.2], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.cosine_pairs(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-finite value in row 1"):
        metrics.cosine_pairs(np.array([[1.0, 0], [np.nan, 1]]), np.ones((2, 2)))


# ----------------------------------------------------------------------------- pair classification
def _mteb_best_f1(scores, labels):
    """MTEB PairClassificationEvaluator.find_best_f1_and_threshold, transcribed."""
    rows = sorted(zip(scores, labels), key=lambda x: x[0], reverse=True)
    best_f1 = best_p = best_r = 0
    threshold = 0
    nextract = ncorrect = 0
    total = sum(labels)
    for i in range(len(rows) - 1):
        nextract += 1
        if rows[i][1] == 1:
            ncorrect += 1
        if ncorrect > 0:
            p, r = ncorrect / nextract, ncorrect / total
            f1 = 2 * p * r / (p + r)
            if f1 > best_f1:
                best_f1, best_p, best_r = f1, p, r
                threshold = (rows[i][0] + rows[i + 1][0]) / 2
    return best_f1, best_p, best_r, threshold


def _mteb_best_acc(scores, labels):
    """MTEB PairClassificationEvaluator.find_best_acc_and_threshold, transcribed."""
    rows = sorted(zip(scores, labels), key=lambda x: x[0], reverse=True)
    max_acc, best_threshold = 0, -1
    positive_so_far, remaining_negatives = 0, sum(np.array(labels) == 0)
    for i in range(len(rows) - 1):
        if rows[i][1] == 1:
            positive_so_far += 1
        else:
            remaining_negatives -= 1
        acc = (positive_so_far + remaining_negatives) / len(labels)
        if acc > max_acc:
            max_acc, best_threshold = acc, (rows[i][0] + rows[i + 1][0]) / 2
    return max_acc, best_threshold


def test_threshold_metrics_match_mteb_and_sklearn_without_ties():
    rng = _rng(2)
    labels = rng.integers(0, 2, size=200)
    scores = labels * 0.3 + rng.normal(size=200)
    got = metrics.threshold_metrics(scores, labels)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, p, r, t = _mteb_best_f1(list(scores), list(labels))
    assert (got["f1"], got["precision"], got["recall"], got["f1_threshold"]) == pytest.approx((f1, p, r, t))
    acc, t_acc = _mteb_best_acc(list(scores), list(labels))
    assert (got["accuracy"], got["accuracy_threshold"]) == pytest.approx((acc, t_acc))
    # The reported threshold really yields the reported values (sklearn on the thresholded predictions).
    assert f1_score(labels, scores > got["f1_threshold"]) == pytest.approx(got["f1"])
    assert accuracy_score(labels, scores > got["accuracy_threshold"]) == pytest.approx(got["accuracy"])


def test_threshold_metrics_never_split_ties():
    # Brute force over every threshold between distinct score values, scored by sklearn.
    rng = _rng(3)
    scores = rng.integers(0, 6, size=60).astype(float) / 5  # many ties
    labels = (rng.uniform(size=60) < scores * 0.8).astype(int)
    uniq = np.unique(scores)
    cuts = (uniq[:-1] + uniq[1:]) / 2
    best_f1 = max(f1_score(labels, scores > t) for t in cuts)
    best_acc = max(accuracy_score(labels, scores > t) for t in cuts)
    got = metrics.threshold_metrics(scores, labels)
    assert got["f1"] == pytest.approx(best_f1)
    assert got["accuracy"] == pytest.approx(best_acc)
    assert f1_score(labels, scores > got["f1_threshold"]) == pytest.approx(got["f1"])


def test_pair_classification_on_embeddings_and_bad_labels():
    rng = _rng(4)
    a, b = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    labels = rng.integers(0, 2, size=30)
    cos = 1 - paired_cosine_distances(a, b)
    assert metrics.pair_classification_metrics(a, b, labels)["ap"] == pytest.approx(
        average_precision_score(labels, cos))
    with pytest.raises(ValueError, match="index 1 is 2"):
        metrics.threshold_metrics([0.1, 0.2, 0.3], [0, 2, 1])
    with pytest.raises(ValueError, match="need both classes"):
        metrics.threshold_metrics([0.1, 0.2], [1, 1])
    all_tied = metrics.threshold_metrics([0.5, 0.5, 0.5], [0, 1, 1])
    assert math.isnan(all_tied["f1"]) and all_tied["ap"] == pytest.approx(2 / 3)


# -------------------------------------------------------------------------------------------- retrieval
def test_retrieval_hand_computed_graded_example():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d5": 0.7, "d2": 0.6}}  # d4 never retrieved, d5 unjudged
    got = metrics.retrieval_per_query(run, qrels, k_values=[1, 3, 5])["q1"]
    log2 = math.log2
    # rank 1 d3 (grade 0), rank 2 d1 (grade 2), rank 3 d5 (unjudged), rank 4 d2 (grade 1).
    idcg3 = 2 / log2(2) + 1 / log2(3) + 1 / log2(4)
    assert got["ndcg_at_3"] == pytest.approx((2 / log2(3)) / idcg3)
    assert got["ndcg_at_5"] == pytest.approx((2 / log2(3) + 1 / log2(5)) / idcg3)
    assert got["ndcg_at_1"] == 0.0
    assert got["map_at_3"] == pytest.approx((1 / 2) / 3)
    assert got["map_at_5"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert got["recall_at_3"] == pytest.approx(1 / 3)
    assert got["recall_at_5"] == pytest.approx(2 / 3)
    assert got["precision_at_5"] == pytest.approx(2 / 5)  # P@k divides by k even if fewer were retrieved
    assert (got["mrr_at_1"], got["mrr_at_3"]) == (0.0, 0.5)


def test_retrieval_ties_missing_and_unjudged_queries_are_explicit():
    qrels = {"tie": {"a": 1}, "missing": {"z": 1}, "norel": {"x": 0}}
    run = {"tie": {"a": 0.5, "b": 0.5}, "norel": {"x": 1.0}, "extra": {"a": 1.0}}
    per_q = metrics.retrieval_per_query(run, qrels, k_values=[10])
    assert per_q["tie"]["mrr_at_10"] == 0.5  # trec_eval: equal scores by doc id descending, so b before a
    assert set(per_q) == {"tie", "missing", "norel"}  # judged queries only; "extra" has no judgments
    assert all(v == 0.0 for v in per_q["missing"].values())
    assert per_q["norel"]["ndcg_at_10"] == 0.0
    summary = metrics.retrieval_metrics(run, qrels, k_values=[10])
    assert summary["n_queries"] == 3
    assert summary["n_queries_missing_from_run"] == 1
    assert summary["n_queries_without_relevant"] == 1
    assert summary["mrr_at_10"] == pytest.approx(0.5 / 3)


def test_retrieval_matches_sklearn_on_full_rankings():
    # When the run scores every judged doc (no ties), trec nDCG@k equals sklearn's ndcg_score, and
    # MAP@n equals sklearn's average precision of the binary relevance.
    rng = _rng(5)
    qrels, run, y_true, y_score = {}, {}, [], []
    for q in range(12):
        grades = rng.integers(0, 4, size=20)
        grades[rng.integers(0, 20)] = max(1, grades.max())
        scores = rng.normal(size=20)
        qrels[f"q{q}"] = {f"d{i}": int(g) for i, g in enumerate(grades)}
        run[f"q{q}"] = {f"d{i}": float(s) for i, s in enumerate(scores)}
        y_true.append(grades)
        y_score.append(scores)
    got = metrics.retrieval_metrics(run, qrels, k_values=[5, 20])
    for k in (5, 20):
        expected = np.mean([ndcg_score([t], [s], k=k) for t, s in zip(y_true, y_score)])
        assert got[f"ndcg_at_{k}"] == pytest.approx(expected, abs=1e-12)
    expected_map = np.mean([average_precision_score(t >= 1, s) for t, s in zip(y_true, y_score)])
    assert got["map_at_20"] == pytest.approx(expected_map, abs=1e-12)
    assert got["recall_at_20"] == pytest.approx(1.0)


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="'q'.*'d'.*integer"):
        metrics.retrieval_metrics({"q": {"d": 1.0}}, {"q": {"d": 0.5}})
    with pytest.raises(ValueError, match="'q'.*'d'.*integer, got 'x'"):
        metrics.retrieval_metrics({"q": {"d": 1.0}}, {"q": {"d": "x"}})
    with pytest.raises(ValueError, match="'q'.*'d'.*non-finite"):
        metrics.retrieval_metrics({"q": {"d": float("nan")}}, {"q": {"d": 1}})
    with pytest.raises(ValueError, match="qrels is empty"):
        metrics.retrieval_metrics({}, {})


# -------------------------------------------------------------------------------------------- reranking
def test_ranking_metrics_vs_sklearn_and_hand_mrr():
    scores = np.array([0.2, 0.9, 0.4, 0.8, 0.1])
    rel = np.array([False, False, True, False, True])
    got = metrics.ranking_metrics(scores, rel, mrr_at_k=10)
    assert got["ap"] == pytest.approx(average_precision_score(rel, scores))
    assert got["mrr"] == pytest.approx(1 / 3)  # ranking 0.9, 0.8, 0.4 -> first relevant at rank 3
    assert metrics.ranking_metrics(scores, rel, mrr_at_k=2)["mrr"] == 0.0


def test_reranking_metrics_with_subqueries_and_skips():
    rng = _rng(6)
    d = 5
    q0, c0 = rng.normal(size=d), rng.normal(size=(6, d))
    q1, c1 = rng.normal(size=(2, d)), rng.normal(size=(4, d))  # two sub-queries: best cosine per candidate
    r0 = np.array([1, 0, 0, 1, 0, 0], bool)
    r1 = np.array([0, 1, 0, 0], bool)
    r_skip = np.array([1, 1], bool)  # no negatives: skipped and counted
    got = metrics.reranking_metrics([q0, q1, q0], [c0, c1, c0[:2]], [r0, r1, r_skip])
    s0 = cosine_similarity(q0[None], c0)[0]
    s1 = cosine_similarity(q1, c1).max(axis=0)
    expected_map = np.mean([average_precision_score(r0, s0), average_precision_score(r1, s1)])
    assert got["map"] == pytest.approx(expected_map)
    assert (got["n_instances"], got["n_skipped"]) == (2, 1)


# ---------------------------------------------------------------------------------------- classification
def test_undersample_counts_and_reshuffles():
    labels = ["a"] * 10 + ["b"] * 3 + ["c"] * 7
    idxs, first = metrics.undersample(labels, 4, None, seed=42)
    counts = {lab: sum(labels[i] == lab for i in first) for lab in "abc"}
    assert counts == {"a": 4, "b": 3, "c": 4}
    assert len(set(first)) == len(first)
    _, second = metrics.undersample(labels, 4, idxs, seed=42)
    assert sorted(second) != sorted(first)  # the carried permutation is reshuffled each experiment
    _, again = metrics.undersample(labels, 4, None, seed=42)
    assert again == first  # deterministic


def _blobs(rng, n_per, centers, scale):
    x = np.concatenate([c + scale * rng.normal(size=(n_per, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return x, y


def test_classification_full_train_matches_plain_logistic_regression():
    rng = _rng(7)
    centers = rng.normal(size=(3, 8))
    x_tr, y_tr = _blobs(rng, 40, centers, 1.0)
    x_te, y_te = _blobs(rng, 30, centers, 1.0)
    got = metrics.classification_metrics(x_tr, y_tr, x_te, y_te, n_experiments=1, samples_per_label=10**6)
    pred = LogisticRegression(max_iter=100, random_state=42).fit(x_tr, y_tr).predict(x_te)
    assert abs(got["accuracy"] - accuracy_score(y_te, pred)) <= 1 / len(y_te)
    assert abs(got["f1"] - f1_score(y_te, pred, average="macro")) <= 0.05
    assert "ap" not in got and len(got["scores_per_experiment"]) == 1


def test_classification_undersampled_binary_reports_ap():
    rng = _rng(8)
    centers = np.array([[3.0, 0, 0], [-3.0, 0, 0]])
    x_tr, y_tr = _blobs(rng, 50, centers, 0.5)
    x_te, y_te = _blobs(rng, 20, centers, 0.5)
    got = metrics.classification_metrics(x_tr, y_tr, x_te, y_te, n_experiments=3, samples_per_label=8)
    assert got["accuracy"] == 1.0 and got["ap"] == 1.0 and got["f1"] == 1.0
    assert len(got["scores_per_experiment"]) == 3
    with pytest.raises(ValueError, match="single class"):
        metrics.classification_metrics(x_tr, np.zeros(len(x_tr)), x_te, y_te)


# -------------------------------------------------------------------------------------------- clustering
def test_clustering_v_measure():
    rng = _rng(9)
    centers = 20 * np.eye(4, 6)
    x, y = _blobs(rng, 25, centers, 0.3)
    assert metrics.clustering_metrics(x, y)["v_measure"] == pytest.approx(1.0)
    noise = rng.normal(size=(100, 6))
    assert metrics.clustering_metrics(noise, rng.integers(0, 4, size=100))["v_measure"] < 0.2
    with pytest.raises(ValueError, match="number of labels"):
        metrics.clustering_metrics(x, np.zeros(len(x)))
