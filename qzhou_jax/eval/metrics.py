"""Evaluation metrics with MTEB's definitions (mteb/evaluation/evaluators/*), on numpy embeddings.

Convention: every metric is returned as a raw float, in [0, 1] (ranking, classification, clustering) or
[-1, 1] (correlations). MTEB's leaderboard and the paper print the same numbers x100 (STSBenchmark
spearman 0.9165 -> "91.65"). Similarity is always cosine (docs/recipe.md section 1).

Where MTEB's behaviour is ambiguous or silently drops data, we keep its numbers but make the choice
explicit; each function's docstring says how:
  * retrieval follows pytrec_eval/trec_eval (graded nDCG, map_cut, recall, P) and counts every judged query,
  * pair classification scans thresholds only between distinct scores (MTEB's loop also cuts inside ties),
  * classification/clustering fix the random seed (MTEB's legacy clustering leaves it free).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn.cluster import MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, v_measure_score

# MTEB's default retrieval cut-offs (AbsTaskRetrieval.k_values).
MTEB_K_VALUES = (1, 3, 5, 10, 20, 100, 1000)


# ---------------------------------------------------------------------------------------------- similarity
def _as_matrix(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [N, D] embedding matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"{name}: non-finite value in row {bad}")
    return x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_pairs(a: Any, b: Any) -> np.ndarray:
    """Cosine of row i of `a` with row i of `b` -> [N] (float64; sklearn's 1 - paired_cosine_distances)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    return np.sum(_unit_rows(a) * _unit_rows(b), axis=-1)


def cosine_matrix(a: Any, b: Any) -> np.ndarray:
    """All-pairs cosine [N, M]; for small sets only (use eval.search for a corpus)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dims differ: {a.shape[1]} vs {b.shape[1]}")
    return _unit_rows(a) @ _unit_rows(b).T


def _as_vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if n is not None and len(x) != n:
        raise ValueError(f"{name}: length {len(x)} does not match the {n} pairs")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: non-finite value at index {int(np.argwhere(~np.isfinite(x))[0, 0])}")
    return x


# --------------------------------------------------------------------------------------------------- STS
def correlation_metrics(scores: Any, gold: Any) -> dict[str, float]:
    """Pearson and Spearman correlation of predicted similarities with gold scores (MTEB STSEvaluator)."""
    scores = _as_vector(scores, "scores")
    gold = _as_vector(gold, "gold", len(scores))
    if len(scores) < 2:
        raise ValueError("correlation needs at least 2 pairs")
    return {
        "pearson": float(scipy.stats.pearsonr(gold, scores)[0]),
        "spearman": float(scipy.stats.spearmanr(gold, scores)[0]),
    }


def sts_metrics(emb1: Any, emb2: Any, gold: Any) -> dict[str, float]:
    """STS main score: Spearman of cosine(emb1[i], emb2[i]) with gold[i] (MTEB "cosine_spearman")."""
    return correlation_metrics(cosine_pairs(emb1, emb2), gold)


# ---------------------------------------------------------------------------------- pair classification
def _binary_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name}: expected {n} labels, got shape {labels.shape}")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise ValueError(f"{name}: labels must be 0 or 1; index {bad[0]} is {labels[bad[0]]}")
    labels = labels.astype(np.int64)
    if labels.min() == labels.max():
        raise ValueError(f"{name}: all {n} labels are {labels[0]}; need both classes")
    return labels


def threshold_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """MTEB PairClassificationEvaluator metrics for one score (higher = more similar).

    ap: sklearn average_precision_score(labels, scores). f1/precision/recall and accuracy: the best value
    over decision thresholds "predict 1 iff score > t", t midway between two consecutive *distinct* sorted
    scores (the first such maximum, as MTEB's strict `>` keeps). MTEB's loop also cuts between tied scores,
    which can only overstate; with tie-free float scores both agree exactly. No threshold exists when all
    scores are equal: the threshold metrics are then NaN.
    """
    scores = _as_vector(scores, "scores")
    labels = _binary_labels(labels, len(scores))
    n, n_pos = len(labels), int(labels.sum())
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # Cut after sorted position i (i = 0..n-2): the top i+1 pairs are predicted positive.
    tp = np.cumsum(y)[:-1]
    n_pred = np.arange(1, n)
    cut_ok = s[:-1] > s[1:]
    thresholds = (s[:-1] + s[1:]) / 2
    out = {"ap": float(average_precision_score(labels, scores))}
    if not cut_ok.any():
        nan = float("nan")
        return out | dict.fromkeys(
            ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall"), nan)
    accuracy = np.where(cut_ok, (tp + (n - n_pos) - (n_pred - tp)) / n, -np.inf)
    f1 = np.where(cut_ok, 2 * tp / (n_pred + n_pos), -np.inf)
    ia, jf = int(np.argmax(accuracy)), int(np.argmax(f1))
    out |= {
        "accuracy": float(accuracy[ia]),
        "accuracy_threshold": float(thresholds[ia]),
        "f1": float(f1[jf]),
        "f1_threshold": float(thresholds[jf]),
        "precision": float(tp[jf] / n_pred[jf]),
        "recall": float(tp[jf] / n_pos),
    }
    return out


def pair_classification_metrics(emb1: Any, emb2: Any, labels: Any) -> dict[str, float]:
    """Pair classification on cosine scores; MTEB's main score is "ap" (here the cosine one)."""
    return threshold_metrics(cosine_pairs(emb1, emb2), labels)


# ------------------------------------------------------------------------------------------- retrieval
def _trec_order(doc_scores: Mapping[str, float], qid: str) -> list[str]:
    """trec_eval's ranking: score descending, ties by doc id descending (strcmp(docno2, docno1))."""
    for doc_id, score in doc_scores.items():
        if not math.isfinite(float(score)):
            raise ValueError(f"run: query {qid!r}, doc {doc_id!r}: non-finite score {score!r}")
    return [d for d, _ in sorted(doc_scores.items(), key=lambda kv: (float(kv[1]), kv[0]), reverse=True)]


def _check_rel(qid: str, doc_id: str, rel: Any) -> int:
    try:
        ok = not isinstance(rel, (bool, np.bool_, str)) and float(rel).is_integer()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"qrels: query {qid!r}, doc {doc_id!r}: relevance must be an integer, got {rel!r}")
    return int(rel)


def retrieval_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = MTEB_K_VALUES,
) -> dict[str, dict[str, float]]:
    """Per-query retrieval metrics with pytrec_eval semantics (what MTEB reports), for every query in qrels.

    Ranking: run scores descending, ties by doc id descending (trec_eval). A document is relevant when its
    qrels grade is >= 1. For each cut-off k:
      ndcg_at_k      DCG@k / IDCG@k, gain = grade (grades <= 0 gain 0), discount log2(rank + 1); IDCG from
                     all judged grades; 0 when the query has no relevant document.
      map_at_k       sum over relevant docs in the top k of precision-at-their-rank, / number relevant.
      recall_at_k    relevant docs in the top k / number relevant (0 when none).
      precision_at_k relevant docs in the top k / k.
      mrr_at_k       1 / rank of the first relevant doc within the top k (MTEB's own MRR), else 0.
    Run queries absent from qrels are ignored (nothing to score them against). Unlike pytrec_eval, a judged
    query missing from the run is not dropped: it scores 0 everywhere (trec_eval's `-c`).
    """
    k_values = sorted({int(k) for k in k_values})
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {k_values}")
    per_query: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        grades = {d: _check_rel(qid, d, r) for d, r in judged.items()}
        ranked = _trec_order(run.get(qid, {}), qid)[: k_values[-1]]
        gains = np.array([max(grades.get(d, 0), 0) for d in ranked], dtype=np.float64)
        hits = (np.array([grades.get(d, 0) for d in ranked]) >= 1).astype(np.float64)
        n_rel = sum(r >= 1 for r in grades.values())
        ideal = np.sort(np.array([g for g in grades.values() if g > 0], dtype=np.float64))[::-1]
        discount = 1.0 / np.log2(np.arange(2, len(ranked) + 2))
        cum_hits = np.cumsum(hits)
        prec_at_rank = cum_hits / np.arange(1, len(ranked) + 1)
        first_hit = int(np.argmax(hits)) if hits.any() else None
        scores: dict[str, float] = {}
        for k in k_values:
            dcg = float(np.sum(gains[:k] * discount[:k]))
            idcg = float(np.sum(ideal[:k] / np.log2(np.arange(2, min(k, len(ideal)) + 2))))
            hits_k = float(cum_hits[min(k, len(ranked)) - 1]) if len(ranked) else 0.0
            scores[f"ndcg_at_{k}"] = dcg / idcg if idcg > 0 else 0.0
            scores[f"map_at_{k}"] = float(np.sum(prec_at_rank[:k] * hits[:k])) / n_rel if n_rel else 0.0
            scores[f"recall_at_{k}"] = hits_k / n_rel if n_rel else 0.0
            scores[f"precision_at_{k}"] = hits_k / k
            scores[f"mrr_at_{k}"] = 1.0 / (first_hit + 1) if first_hit is not None and first_hit < k else 0.0
        per_query[qid] = scores
    return per_query


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = MTEB_K_VALUES,
) -> dict[str, float]:
    """Mean of `retrieval_per_query` over all judged queries (main score: ndcg_at_10), plus the counts
    n_queries, n_queries_missing_from_run and n_queries_without_relevant so that nothing is hidden."""
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate")
    per_query = retrieval_per_query(run, qrels, k_values)
    names = next(iter(per_query.values())).keys()
    out: dict[str, float] = {m: float(np.mean([q[m] for q in per_query.values()])) for m in names}
    out["n_queries"] = len(per_query)
    out["n_queries_missing_from_run"] = sum(q not in run for q in qrels)
    out["n_queries_without_relevant"] = sum(
        not any(_check_rel(q, d, r) >= 1 for d, r in judged.items()) for q, judged in qrels.items())
    return out


# ------------------------------------------------------------------------------------------- reranking
def ranking_metrics(scores: Any, is_relevant: Any, mrr_at_k: int = 10) -> dict[str, float]:
    """One candidate list (MTEB RerankingEvaluator): ap = sklearn AP; mrr = 1/rank of the first relevant
    candidate within the top `mrr_at_k` (ties keep candidate order), else 0."""
    scores = _as_vector(scores, "scores")
    rel = np.asarray(is_relevant, dtype=bool)
    if rel.shape != scores.shape:
        raise ValueError(f"is_relevant has shape {rel.shape}, scores {scores.shape}")
    ranked_rel = rel[np.argsort(-scores, kind="stable")][:mrr_at_k]
    mrr = 1.0 / (int(np.argmax(ranked_rel)) + 1) if ranked_rel.any() else 0.0
    return {"ap": float(average_precision_score(rel, scores)), "mrr": mrr}


def reranking_metrics(
    query_embs: Sequence[Any],
    candidate_embs: Sequence[Any],
    is_relevant: Sequence[Any],
    mrr_at_k: int = 10,
) -> dict[str, float]:
    """MAP and MRR@k over reranking instances, scored by cosine (MTEB RerankingEvaluator).

    Instance i: query_embs[i] is [D] (or [m, D] sub-queries: each candidate takes its best cosine, as MTEB),
    candidate_embs[i] is [C_i, D], is_relevant[i] is [C_i] bool. Instances without a relevant or without an
    irrelevant candidate are skipped as MTEB does, and counted in n_skipped.
    """
    if not (len(query_embs) == len(candidate_embs) == len(is_relevant)):
        raise ValueError(
            f"instance counts differ: {len(query_embs)} queries, {len(candidate_embs)} candidate lists, "
            f"{len(is_relevant)} relevance lists")
    aps, mrrs, skipped = [], [], 0
    for i, (q, cands, rel) in enumerate(zip(query_embs, candidate_embs, is_relevant)):
        rel = np.asarray(rel, dtype=bool)
        if rel.all() or not rel.any():
            skipped += 1
            continue
        q = np.asarray(q, dtype=np.float64)
        sims = cosine_matrix(q.reshape(-1, q.shape[-1]), cands).max(axis=0)
        if len(sims) != len(rel):
            raise ValueError(f"instance {i}: {len(sims)} candidates but {len(rel)} relevance flags")
        m = ranking_metrics(sims, rel, mrr_at_k)
        aps.append(m["ap"])
        mrrs.append(m["mrr"])
    if not aps:
        raise ValueError(f"all {skipped} reranking instances lack a relevant or an irrelevant candidate")
    return {"map": float(np.mean(aps)), f"mrr_at_{mrr_at_k}": float(np.mean(mrrs)),
            "n_instances": len(aps), "n_skipped": skipped}


# --------------------------------------------------------------------------------------- classification
def undersample(labels: Sequence[Any], samples_per_label: int, idxs: list[int] | None,
                seed: int) -> tuple[list[int], list[int]]:
    """MTEB's `_undersample_data` (v2): shuffle the carried-over index list in place with a fresh
    RandomState(seed), then keep the first `samples_per_label` indices of each label in that order.

    Returns (the shuffled index list, to pass to the next experiment; the selected indices).
    Because the *previous* permutation is reshuffled, each experiment draws a different subset.
    """
    if idxs is None:
        idxs = list(range(len(labels)))
    np.random.RandomState(seed).shuffle(idxs)
    taken: dict[Any, int] = defaultdict(int)
    selected = []
    for i in idxs:
        if taken[labels[i]] < samples_per_label:
            selected.append(i)
            taken[labels[i]] += 1
    return idxs, selected


def classification_metrics(
    train_emb: Any,
    train_labels: Sequence[Any],
    test_emb: Any,
    test_labels: Sequence[Any],
    *,
    n_experiments: int = 10,
    samples_per_label: int = 8,
    seed: int = 42,
    max_iter: int = 100,
) -> dict[str, Any]:
    """MTEB (v2) AbsTaskClassification with its logistic-regression evaluator.

    For each of `n_experiments`: undersample the train set to `samples_per_label` texts per label
    (`undersample`), fit sklearn LogisticRegression(max_iter=100, random_state=seed) on the embeddings,
    predict the full test set. Reports the mean over experiments of accuracy (main score), macro F1 ("f1"),
    weighted F1 and, for two test labels, AP of the predicted labels (as MTEB does), plus the per-experiment
    scores. MTEB's defaults are 10 experiments x 8 per label; many MTEB tasks raise samples_per_label, and a
    value >= the largest class size uses the whole train set. Convergence warnings at max_iter=100 are
    expected (MTEB's setting) and silenced.
    """
    x_train, x_test = _as_matrix(train_emb, "train_emb"), _as_matrix(test_emb, "test_emb")
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError(f"labels/embeddings mismatch: train {len(y_train)}/{len(x_train)}, "
                         f"test {len(y_test)}/{len(x_test)}")
    if len(np.unique(y_train)) < 2:
        raise ValueError("train_labels hold a single class: nothing to classify")
    test_classes = np.unique(y_test)
    binary = len(test_classes) == 2
    idxs, per_experiment = None, []
    for _ in range(n_experiments):
        idxs, selected = undersample(list(y_train), samples_per_label, idxs, seed)
        clf = LogisticRegression(max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train[selected], y_train[selected])
        y_pred = clf.predict(x_test)
        scores = {
            "accuracy": float(accuracy_score(y_test, y_pred)),
            "f1": float(f1_score(y_test, y_pred, average="macro")),
            "f1_weighted": float(f1_score(y_test, y_pred, average="weighted")),
        }
        if binary:
            scores["ap"] = float(average_precision_score(y_test == test_classes[1], y_pred == test_classes[1]))
        per_experiment.append(scores)
    out: dict[str, Any] = {k: float(np.mean([s[k] for s in per_experiment])) for k in per_experiment[0]}
    out["scores_per_experiment"] = per_experiment
    return out


# ------------------------------------------------------------------------------------------- clustering
def clustering_metrics(emb: Any, labels: Sequence[Any], *, batch_size: int = 500,
                       seed: int = 42) -> dict[str, float]:
    """MTEB ClusteringEvaluator: MiniBatchKMeans(k = number of distinct labels, batch_size=500,
    n_init="auto") on the embeddings, scored by V-measure against the labels. MTEB leaves the k-means seed
    free; we fix it (`seed`) so a run is reproducible."""
    x = _as_matrix(emb, "emb")
    labels = np.asarray(labels)
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} embeddings")
    k = len(np.unique(labels))
    if k < 2 or k > len(x):
        raise ValueError(f"need 2 <= number of labels ({k}) <= number of texts ({len(x)})")
    model = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init="auto", random_state=seed)
    assignment = model.fit(x).labels_
    return {"v_measure": float(v_measure_score(labels, assignment))}
