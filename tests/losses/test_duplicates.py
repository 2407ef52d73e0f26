"""Duplicate masks of the losses (qzhou_jax/losses/) vs. an independent float64 loop reference that compares the
texts themselves.

Batches are built from strings: identical texts (after case/whitespace normalisation) get the same embedding,
as a real encoder would give them, and the hashes come from the data pipeline's `text_hash`.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax.batch import Batch
from qzhou_jax.data.transforms import text_hash
from qzhou_jax.losses import LossConfig, task_loss

E = 16


def norm(text):  # the reference's own normalisation (no NFKC needed for these ASCII texts)
    return " ".join(text.lower().split())


def embed(texts, seed=0):
    """text -> unit vector, one per distinct normalised text."""
    rng = np.random.default_rng(seed)
    table = {}
    out = []
    for t in texts:
        if norm(t) not in table:
            v = rng.normal(size=E)
            table[norm(t)] = v / np.linalg.norm(v)
        out.append(table[norm(t)])
    return np.array(out, dtype=np.float32)


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def cos(x, y):
    return float(np.dot(np.asarray(x, np.float64), np.asarray(y, np.float64)))


# Row 1 repeats row 0's query AND positive; row 2 repeats row 0's query with another positive; row 3 has row 4's
# positive (duplicated positive, different queries); row 4's hard negative is (case-changed) its own positive.
QUERIES = ["what is a cat", "What is a  cat", "what is a cat", "where do fish swim", "how do fish swim"]
DOCS = [["a cat is an animal", "dogs bark"],
        ["a cat is an animal", "birds fly"],
        ["cats purr", "the sky is blue"],
        ["fish swim in the sea", "red is a colour"],
        ["fish swim in the sea", "FISH swim in the sea"]]


def retrieval_batch():
    a = embed(QUERIES + [d for row in DOCS for d in row])[: len(QUERIES)]
    c = embed(QUERIES + [d for row in DOCS for d in row])[len(QUERIES):].reshape(len(QUERIES), 2, E)
    ah = np.array([text_hash(q) for q in QUERIES], np.int32)
    ch = np.array([[text_hash(d) for d in row] for row in DOCS], np.int32)
    return a, c, ah, ch


def ref_retrieval(a, c, tau, query_query, doc_query, doc_doc, masks):
    """Loop reference; with `masks`, a negative is dropped when its text, or (for a query / a positive) its
    pair partner's text, equals query i or positive i."""
    b, n_cand = len(QUERIES), 2
    total, dropped = 0.0, 0
    for i in range(b):
        own = {norm(QUERIES[i]), norm(DOCS[i][0])}

        def dup(text, partner=None):
            return masks and (norm(text) in own or (partner is not None and norm(partner) in own))

        pos = cos(a[i], c[i, 0])
        negatives = []
        for j in range(b):
            for k in range(n_cand):
                if (j, k) == (i, 0):
                    continue
                partner = QUERIES[j] if k == 0 else None
                for row_vec, on in ((a[i], True), (c[i, 0], doc_doc)):
                    if on:
                        if dup(DOCS[j][k], partner):
                            dropped += 1
                        else:
                            negatives.append(cos(row_vec, c[j, k]))
            if j != i:
                for row_vec, on in ((a[i], query_query), (c[i, 0], doc_query)):
                    if on:
                        if dup(QUERIES[j], DOCS[j][0]):
                            dropped += 1
                        else:
                            negatives.append(cos(row_vec, a[j]))
        total += lse([pos / tau] + [s / tau for s in negatives]) - pos / tau
    return total / b, dropped


@pytest.mark.parametrize("query_query, doc_query, doc_doc", [(True, False, False), (True, True, True),
                                                             (False, False, True)])
def test_retrieval_duplicated_queries_and_positives(query_query, doc_query, doc_doc):
    a, c, ah, ch = retrieval_batch()
    cfg = LossConfig(tau=0.05, query_query=query_query, doc_query=doc_query, doc_doc=doc_doc)
    loss, metrics = task_loss(jnp.asarray(a), jnp.asarray(c),
                              Batch(anchor_hash=jnp.asarray(ah), cand_hash=jnp.asarray(ch), task="retrieval"), cfg)
    expected, dropped = ref_retrieval(a, c, 0.05, query_query, doc_query, doc_doc, masks=True)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
    assert float(metrics["masked_duplicates"]) == dropped > 0
    # without hashes: the plain loss, and it differs (the duplicates were real terms)
    plain, plain_metrics = task_loss(jnp.asarray(a), jnp.asarray(c), Batch(task="retrieval"), cfg)
    np.testing.assert_allclose(float(plain), ref_retrieval(a, c, 0.05, query_query, doc_query, doc_doc, False)[0],
                               rtol=1e-5, atol=1e-5)
    assert "masked_duplicates" not in plain_metrics and abs(float(plain) - expected) > 1e-3


def test_cosent_identical_pairs_are_not_ranked_against_each_other():
    pairs = [("a cat sat", "a dog sat", 4.0), ("A cat sat", "a dog  sat", 1.0), ("a dog sat", "a cat sat", 2.5),
             ("fish swim", "birds fly", 0.5), ("red sky", "blue sea", 3.0)]
    emb = embed([t for p in pairs for t in p[:2]])
    a, b = emb[0::2], emb[1::2]
    gold = np.array([p[2] for p in pairs], np.float32)
    tau = 0.05
    s = [cos(x, y) for x, y in zip(a, b)]
    terms, dropped = [0.0], 0
    for i in range(5):
        for k in range(5):
            if gold[i] > gold[k]:
                if {norm(pairs[i][0]), norm(pairs[i][1])} == {norm(pairs[k][0]), norm(pairs[k][1])}:
                    dropped += 1
                else:
                    terms.append((s[k] - s[i]) / tau)
    loss, metrics = task_loss(
        jnp.asarray(a), jnp.asarray(b[:, None]),
        Batch(score=jnp.asarray(gold), anchor_hash=jnp.asarray([text_hash(p[0]) for p in pairs]),
              cand_hash=jnp.asarray([[text_hash(p[1])] for p in pairs]), task="pair_score"),
        LossConfig(cosent_tau=tau))
    np.testing.assert_allclose(float(loss), lse(terms), rtol=1e-5, atol=1e-5)
    assert float(metrics["masked_duplicates"]) == dropped == 3


def test_classification_identical_texts_are_not_negatives():
    texts = [["my card is lost", "card missing", "top up failed", "refund please"],
             ["top up failed", "top-up did not work", "My card is lost", "refund please"],
             ["refund please", "give money back", "card missing", "MY card is lost"]]  # mislabelled copy
    labels = np.array([[0, 0, 1, 2], [1, 1, 0, 2], [2, 2, 0, 1]], np.int32)
    emb = embed([t for row in texts for t in row]).reshape(3, 4, E)
    a, c = emb[:, 0], emb[:, 1:]
    tau = 0.05
    total, dropped = 0.0, 0
    for i in range(3):
        own = {norm(texts[i][0]), norm(texts[i][1])}
        negs = []
        for j in range(3):
            items = ([(texts[j][0], a[j], labels[j, 0])] if j != i else []) + \
                    [(texts[j][k], c[j, k - 1], labels[j, k]) for k in (2, 3)]
            for text, vec, label in items:
                if label == labels[i, 0]:
                    continue
                if norm(text) in own:
                    dropped += 1
                else:
                    negs.append(cos(a[i], vec))
        pos = cos(a[i], c[i, 0])
        total += lse([pos / tau] + [s / tau for s in negs]) - pos / tau
    loss, metrics = task_loss(
        jnp.asarray(a), jnp.asarray(c),
        Batch(labels=jnp.asarray(labels), anchor_hash=jnp.asarray([text_hash(r[0]) for r in texts]),
              cand_hash=jnp.asarray([[text_hash(t) for t in r[1:]] for r in texts]), task="classification"),
        LossConfig(tau=tau))
    np.testing.assert_allclose(float(loss), total / 3, rtol=1e-5, atol=1e-5)
    assert float(metrics["masked_duplicates"]) == dropped > 0


@pytest.mark.parametrize("task", ["retrieval", "pair_score", "classification"])
def test_hashes_must_come_in_pairs(task):
    a, c, ah, ch = retrieval_batch()
    fields = dict(score=np.zeros(len(a), np.float32), labels=np.zeros((len(a), 3), np.int32))
    with pytest.raises(ValueError, match="both batch.anchor_hash and batch.cand_hash.*only anchor_hash"):
        task_loss(jnp.asarray(a), jnp.asarray(c), Batch(**fields, anchor_hash=jnp.asarray(ah), task=task))
    with pytest.raises(ValueError, match="only cand_hash"):
        task_loss(jnp.asarray(a), jnp.asarray(c), Batch(**fields, cand_hash=jnp.asarray(ch), task=task))


def test_trecqa_batches_carry_duplicate_queries_that_the_loss_masks():
    """shared:trecqa repeats its 83 questions over 348 samples: a pipeline batch holds repeated queries, whose
    hashes reach the loss and drop those terms (embeddings: one vector per distinct text)."""
    from qzhou_jax.data.pipeline import build_pipeline
    from qzhou_jax.data.shared_data import data_dir

    if not (data_dir() / "trecqa_wang").is_dir():
        pytest.skip(f"shared data folder {data_dir()} absent")
    config = dict(datasets=[dict(name="trecqa", source="shared:trecqa", num_negatives=1)],
                  batch_size=dict(retrieval=32))
    batch = next(iter(build_pipeline(config, None, process_index=0, process_count=1)[0]))
    assert len(set(batch["anchor"])) < 32  # real duplicates in one batch
    texts = batch["anchor"] + [t for row in batch["candidates"] for t in row]
    emb = embed(texts)
    a, c = emb[:32], emb[32:].reshape(32, 2, E)
    hashed = Batch(cand_valid=jnp.asarray(batch["cand_valid"]), anchor_hash=jnp.asarray(batch["anchor_hash"]),
                   cand_hash=jnp.asarray(batch["cand_hash"]), task="retrieval")
    loss, metrics = task_loss(jnp.asarray(a), jnp.asarray(c), hashed)
    assert float(metrics["masked_duplicates"]) > 0 and np.isfinite(float(loss))
