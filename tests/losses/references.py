"""Test data and independent float64 loop references, written straight from docs/recipe.md section 3, shared by the
tests of every loss module (tests/losses/test_*.py)."""
import math

import numpy as np

from qzhou_jax.batch import Batch
from qzhou_jax.losses import LossConfig

B, C, E = 6, 3, 16
TOL = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ test data


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_batch(seed, b=B, n_cand=C, e=E, noise=1.0):
    """Anchors, candidates (positives correlated with their anchor) and a validity mask with padding."""
    rng = np.random.default_rng(seed)
    a = _normalize(rng.normal(size=(b, e)))
    c = rng.normal(size=(b, n_cand, e))
    c[:, 0] = a + noise * c[:, 0]
    c = _normalize(c)
    valid = rng.random((b, n_cand)) > 0.3
    valid[:, 0] = True
    return a.astype(np.float32), c.astype(np.float32), valid


def make_labels(seed, b=B, n_cand=C, n_classes=3):
    """Anchor + positive share a label; negatives are mostly other labels, with some collisions across samples."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=(b, 1 + n_cand))
    labels[:, 1] = labels[:, 0]
    return labels


def call(loss_fn, a, c, *, config=None, **fields):
    """loss_fn(a, c, Batch(**fields), config) -> the loss alone: the one way every loss is called."""
    return loss_fn(a, c, Batch(**fields), config if config is not None else LossConfig())[0]


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _cos(x, y):
    return float(np.dot(np.asarray(x, np.float64), np.asarray(y, np.float64)))


# ------------------------------------------------------------------------------------ loop references


def ref_retrieval(a, c, valid, tau=0.02, hard_negatives=True, in_batch_docs=True, query_query=True,
                  doc_query=False, doc_doc=False, false_negative_margin=None):
    """Returns (loss, number of negatives removed by the false-negative margin)."""
    b, n_cand = valid.shape
    total, dropped = 0.0, 0
    for i in range(b):
        pos = _cos(a[i], c[i, 0])
        negatives = []  # similarities of the denominator's negative terms
        for j in range(b):
            for k in range(n_cand):
                if not valid[j, k] or (j, k) == (i, 0):
                    continue
                if (j == i and hard_negatives) or (j != i and in_batch_docs):
                    negatives.append(_cos(a[i], c[j, k]))
                if doc_doc:
                    negatives.append(_cos(c[i, 0], c[j, k]))
            if j != i and query_query:
                negatives.append(_cos(a[i], a[j]))
            if j != i and doc_query:
                negatives.append(_cos(c[i, 0], a[j]))
        if false_negative_margin is not None:
            kept = [s for s in negatives if s <= pos + false_negative_margin]
            dropped += len(negatives) - len(kept)
            negatives = kept
        total += _lse([pos / tau] + [s / tau for s in negatives]) - pos / tau
    return total / b, dropped


def ref_cosent(a, b_emb, score, tau=0.02):
    s = [_cos(x, y) for x, y in zip(a, b_emb)]
    terms = [0.0]
    for i in range(len(s)):
        for k in range(len(s)):
            if score[i] > score[k]:
                terms.append((s[k] - s[i]) / tau)
    return _lse(terms)


def ref_classification(a, c, valid, labels, tau=0.02):
    b, n_cand = valid.shape
    total = 0.0
    for i in range(b):
        pos = _cos(a[i], c[i, 0])
        terms = [pos / tau]
        for j in range(b):
            if j != i and labels[j, 0] != labels[i, 0]:
                terms.append(_cos(a[i], a[j]) / tau)
            for k in range(1, n_cand):
                if valid[j, k] and labels[j, 1 + k] != labels[i, 0]:
                    terms.append(_cos(a[i], c[j, k]) / tau)
        total += _lse(terms) - pos / tau
    return total / b
