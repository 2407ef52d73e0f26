"""Losses vs. independent float64 loop references written straight from docs/recipe.md section 3."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qzhou_jax import losses
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


def make_labels(seed, b=B, n_cand=C, n_classes=3):
    """Anchor + positive share a label; negatives are mostly other labels, with some collisions across samples."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=(b, 1 + n_cand))
    labels[:, 1] = labels[:, 0]
    return labels


# --------------------------------------------------------------------------------------------- retrieval

SWITCHES = ("hard_negatives", "in_batch_docs", "query_query", "doc_query", "doc_doc")
SWITCH_CASES = [
    dict(zip(SWITCHES, flags))
    for flags in [
        (True, True, True, False, False),  # the paper's default
        (False, False, False, False, False),  # positive only: loss 0
        (True, False, False, False, False),
        (False, True, False, False, False),
        (False, False, True, False, False),
        (True, True, True, True, False),
        (True, True, True, False, True),
        (True, True, True, True, True),
        (False, True, False, True, True),
    ]
]


@pytest.mark.parametrize("switches", SWITCH_CASES, ids=lambda s: "".join("1" if v else "0" for v in s.values()))
@pytest.mark.parametrize("tau", [0.02, 0.07])
def test_retrieval_matches_loop_reference(switches, tau):
    a, c, valid = make_batch(1)
    got = losses.retrieval_infonce(a, c, valid, tau=tau, **switches)
    want, _ = ref_retrieval(a, c, valid, tau=tau, **switches)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, **TOL)


@pytest.mark.parametrize("margin", [0.1, 0.0, -0.05])
@pytest.mark.parametrize("all_terms", [False, True])
def test_retrieval_false_negative_margin(margin, all_terms):
    a, c, valid = make_batch(2)
    kw = dict(doc_query=all_terms, doc_doc=all_terms)
    got = losses.retrieval_infonce(a, c, valid, false_negative_margin=margin, **kw)
    want, dropped = ref_retrieval(a, c, valid, false_negative_margin=margin, **kw)
    assert dropped > 0, "test data must make the margin drop something"
    np.testing.assert_allclose(float(got), want, **TOL)
    without = losses.retrieval_infonce(a, c, valid, **kw)
    assert float(got) < float(without)  # dropping positive-scored terms shrinks the denominator


def test_retrieval_ignores_invalid_candidates_values():
    a, c, valid = make_batch(3)
    garbage = np.where(valid[..., None], c, 123.0).astype(np.float32)
    np.testing.assert_allclose(float(losses.retrieval_infonce(a, garbage, valid, doc_doc=True)),
                               float(losses.retrieval_infonce(a, c, valid, doc_doc=True)), rtol=1e-6)


def test_retrieval_all_valid_when_mask_is_none():
    a, c, _ = make_batch(4)
    want, _ = ref_retrieval(a, c, np.ones((B, C), bool))
    np.testing.assert_allclose(float(losses.retrieval_infonce(a, c, None)), want, **TOL)


# ------------------------------------------------------------------------------------------------ CoSENT


@pytest.mark.parametrize("kind", ["nli", "sts", "all_equal"])
@pytest.mark.parametrize("tau", [0.02, 0.05])
def test_cosent_matches_loop_reference(kind, tau):
    a, c, _ = make_batch(5, b=8, n_cand=1, noise=0.8)
    rng = np.random.default_rng(6)
    score = {"nli": rng.integers(0, 3, 8), "sts": rng.uniform(0, 5, 8), "all_equal": np.ones(8)}[kind]
    got = losses.cosent(a, c[:, 0], jnp.asarray(score, jnp.float32), tau=tau)
    want = ref_cosent(a, c[:, 0], score.astype(np.float32), tau=tau)
    np.testing.assert_allclose(float(got), want, **TOL)
    if kind == "all_equal":
        assert float(got) == 0.0  # no ordered pair: log(1)


# ---------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [7, 8, 9])
@pytest.mark.parametrize("tau", [0.02, 0.1])
def test_classification_matches_loop_reference(seed, tau):
    a, c, valid = make_batch(seed)
    labels = make_labels(seed)
    got = losses.classification_infonce(a, c, valid, labels, tau=tau)
    want = ref_classification(a, c, valid, labels, tau=tau)
    np.testing.assert_allclose(float(got), want, **TOL)


def test_classification_excludes_other_positives_and_same_labels():
    """c[j, 0] may enter only row j's loss (its numerator), so d loss / d c[j, 0] is parallel to a_j."""
    a, c, valid = make_batch(10)
    labels = make_labels(10)
    g = np.asarray(jax.jit(jax.grad(losses.classification_infonce, argnums=1))(a, c, valid, labels))[:, 0].astype(np.float64)
    cos = np.abs(np.sum(g * a, axis=1)) / (np.linalg.norm(g, axis=1) * np.linalg.norm(a, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    # One label everywhere: nothing is a negative, the denominator is the positive alone, loss log(1) = 0.
    same = np.zeros_like(labels)
    np.testing.assert_allclose(float(losses.classification_infonce(a, c, valid, same)), 0.0, atol=1e-6)


# --------------------------------------------------------------------------------------------- gradients


def _all_losses(valid, labels, score):
    return {
        "retrieval": lambda a, c: losses.retrieval_infonce(a, c, valid, doc_query=True, doc_doc=True),
        "retrieval_margin": lambda a, c: losses.retrieval_infonce(a, c, valid, false_negative_margin=0.1),
        "classification": lambda a, c: losses.classification_infonce(a, c, valid, labels),
        "cosent": lambda a, c: losses.cosent(a, c[:, 0], score),
        "matryoshka": lambda a, c: losses.matryoshka(losses.classification_infonce, (4, 8))(a, c, valid, labels),
    }


def test_gradients_finite_for_nearly_identical_embeddings():
    rng = np.random.default_rng(11)
    base = rng.normal(size=E)
    a = _normalize(base + 1e-4 * rng.normal(size=(B, E))).astype(np.float32)
    c = _normalize(base + 1e-4 * rng.normal(size=(B, C, E))).astype(np.float32)
    _, _, valid = make_batch(11)
    for name, fn in _all_losses(valid, make_labels(11), jnp.arange(B, dtype=jnp.float32)).items():
        loss, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(a, c)
        assert np.isfinite(float(loss)), name
        assert all(np.all(np.isfinite(g)) for g in grads), name


def test_invalid_candidates_get_exactly_zero_gradient():
    a, c, valid = make_batch(12)
    c = np.where(valid[..., None], c, 0.0).astype(np.float32)  # zero-vector padding, as a collator may emit
    assert not valid.all()
    for name, fn in _all_losses(valid, make_labels(12), jnp.arange(B, dtype=jnp.float32)).items():
        if name == "cosent":
            continue
        g = jax.jit(jax.grad(fn, argnums=1))(a, c)
        assert np.all(np.asarray(g)[~valid] == 0.0), name
        assert np.any(np.asarray(g)[valid] != 0.0), name
    # Matryoshka re-normalises: zero padding rows must stay finite with zero gradient there too.
    wrapped = losses.matryoshka(_all_losses(valid, None, None)["retrieval"], (4, 8, E))
    loss, g = jax.jit(jax.value_and_grad(wrapped, argnums=1))(a, c)
    assert np.isfinite(float(loss)) and np.all(np.asarray(g)[~valid] == 0.0)


def test_bf16_inputs_give_float32_loss():
    a, c, valid = make_batch(13)
    labels = make_labels(13)
    score = jnp.asarray(np.random.default_rng(13).uniform(0, 5, B), jnp.float32)
    a16, c16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(c, jnp.bfloat16)
    for name, fn in _all_losses(valid, labels, score).items():
        got = fn(a16, c16)
        assert got.dtype == jnp.float32, name
        # Math in float32: equals the fp32 loss of the bf16-rounded inputs, and is close to the unrounded one.
        np.testing.assert_allclose(float(got), float(fn(a16.astype(jnp.float32), c16.astype(jnp.float32))),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(float(got), float(fn(a, c)), rtol=0.05, atol=0.05)


# -------------------------------------------------------------------------------------------- Matryoshka


def test_matryoshka_is_mean_over_truncated_renormalised_losses():
    a, c, valid = make_batch(14)
    dims = (4, 8, E)
    got = losses.matryoshka(losses.retrieval_infonce, dims)(a, c, valid, tau=0.05)
    want = np.mean([ref_retrieval(_normalize(a[:, :d].astype(np.float64)), _normalize(c[..., :d].astype(np.float64)),
                                  valid, tau=0.05)[0] for d in dims])
    np.testing.assert_allclose(float(got), want, **TOL)
    assert losses.matryoshka(losses.cosent, None) is losses.cosent
    assert losses.matryoshka(losses.cosent, ()) is losses.cosent
    with pytest.raises(ValueError, match="exceeds the embedding dim"):
        losses.matryoshka(losses.retrieval_infonce, (E + 1,))(a, c, valid)


# ------------------------------------------------------------------------------- dispatcher, jit, config


def test_task_loss_dispatch_and_metrics():
    a, c, valid = make_batch(15)
    labels = make_labels(15)
    cfg = LossConfig(tau=0.05, doc_doc=True)
    loss, metrics = losses.task_loss("retrieval", a, c, valid, config=cfg)
    np.testing.assert_allclose(float(loss), ref_retrieval(a, c, valid, tau=0.05, doc_doc=True)[0], **TOL)
    # top-1 accuracy vs a loop over the paper-default denominator (query-doc and query-query terms)
    _, m = losses.task_loss("retrieval", a, c, valid, config=LossConfig())
    hits = [all(_cos(a[i], c[i, 0]) >= _cos(a[i], x)
                for x in [c[j, k] for j in range(B) for k in range(C) if valid[j, k] and (j, k) != (i, 0)]
                + [a[j] for j in range(B) if j != i]) for i in range(B)]
    np.testing.assert_allclose(float(m["accuracy"]), np.mean(hits), atol=1e-7)

    loss, _ = losses.task_loss("classification", a, c, valid, labels=labels, config=cfg)
    np.testing.assert_allclose(float(loss), ref_classification(a, c, valid, labels, tau=0.05), **TOL)

    score = np.random.default_rng(15).integers(0, 3, B).astype(np.float32)
    loss, m = losses.task_loss("pair_score", a, c[:, :1], None, score=score, config=LossConfig(cosent_tau=0.05))
    np.testing.assert_allclose(float(loss), ref_cosent(a, c[:, 0], score, tau=0.05), **TOL)
    assert 0.0 <= float(m["pair_accuracy"]) <= 1.0

    mcfg = LossConfig(matryoshka_dims=[8, E])
    loss, m = losses.task_loss("retrieval", a, c, valid, config=mcfg)
    np.testing.assert_allclose(float(loss), (float(m["loss@8"]) + float(m[f"loss@{E}"])) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(m[f"loss@{E}"]), ref_retrieval(a, c, valid)[0], **TOL)

    with pytest.raises(ValueError, match="unknown task"):
        losses.task_loss("sts", a, c, valid)
    with pytest.raises(ValueError, match="needs `score`"):
        losses.task_loss("pair_score", a, c[:, :1])
    with pytest.raises(ValueError, match="needs `labels`"):
        losses.task_loss("classification", a, c, valid)
    with pytest.raises(ValueError, match=r"\[B, 1, E\]"):
        losses.task_loss("pair_score", a, c, score=score)
    with pytest.raises(ValueError, match="cand_valid"):
        losses.task_loss("retrieval", a, c, valid[:, :2])
    with pytest.raises(ValueError, match="labels"):
        losses.task_loss("classification", a, c, valid, labels=labels[:, :2])


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_jit_and_sharded_global_batch_match_eager(axis_type):
    """In-batch negatives must span devices: the sharded jit result equals the single-device loss."""
    n_dev = len(jax.devices())
    a, c, valid = make_batch(16, b=n_dev)
    labels = make_labels(16, b=n_dev)
    score = np.random.default_rng(16).integers(0, 3, n_dev).astype(np.float32)
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    shard = lambda x: jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))  # noqa: E731
    step = jax.jit(losses.task_loss, static_argnames=("task", "config"))
    cfg = LossConfig(doc_query=True, doc_doc=True, false_negative_margin=0.1)
    cases = [("retrieval", c, {}), ("classification", c, {"labels": labels}), ("pair_score", c[:, :1], {"score": score})]
    for task, cands, kw in cases:
        sharded_kw = {k: shard(v) for k, v in kw.items()}
        got, metrics = step(task, shard(a), shard(cands), shard(valid[:, :cands.shape[1]]), config=cfg, **sharded_kw)
        want, want_metrics = losses.task_loss(task, a, cands, valid[:, :cands.shape[1]], config=cfg, **kw)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=task)
        for name, value in want_metrics.items():
            np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-6, err_msg=f"{task} {name}")


def test_loss_config_from_dicts():
    cfg = LossConfig(**ml_collections.ConfigDict({"tau": 0.05, "matryoshka_dims": [128, 256]}))
    assert cfg.tau == 0.05 and cfg.matryoshka_dims == (128, 256)
    hash(cfg)  # usable as a static jit argument
    assert LossConfig(**{"matryoshka_dims": []}).matryoshka_dims is None
    assert losses.loss_config_from({"doc_doc": True}) == LossConfig(doc_doc=True)
    with pytest.raises(ValueError, match="unknown loss option.*'temperature'"):
        losses.loss_config_from({"temperature": 0.1})
    with pytest.raises(ValueError, match="tau"):
        LossConfig(tau=0.0)
    with pytest.raises(ValueError, match="doc_doc"):
        LossConfig(doc_doc="yes")
    with pytest.raises(ValueError, match="matryoshka_dims"):
        LossConfig(matryoshka_dims=(0, 8))
    with pytest.raises(ValueError, match="false_negative_margin"):
        LossConfig(false_negative_margin="0.1")


def test_switch_cases_cover_every_switch_both_ways():
    """Guards the parametrisation above: every switch is exercised on and off."""
    for name in SWITCHES:
        assert {case[name] for case in SWITCH_CASES} == {True, False}


def test_sim_spread_is_std_of_the_cosines_each_loss_ranks():
    """sim_spread (docs/learning.md): CoSENT, the std of the pair cosines; InfoNCE, the std over every similarity
    in a denominator (positives and kept negatives), by a loop over the paper-default retrieval terms."""
    a, c, valid = make_batch(21)
    score = np.random.default_rng(21).integers(0, 3, B).astype(np.float32)
    _, m = losses.task_loss("pair_score", a, c[:, :1], None, score=score)
    np.testing.assert_allclose(float(m["sim_spread"]), np.std([_cos(a[i], c[i, 0]) for i in range(B)]), **TOL)

    _, m = losses.task_loss("retrieval", a, c, valid)
    sims = []
    for i in range(B):
        sims.append(_cos(a[i], c[i, 0]))
        sims += [_cos(a[i], c[j, k]) for j in range(B) for k in range(C) if valid[j, k] and (j, k) != (i, 0)]
        sims += [_cos(a[i], a[j]) for j in range(B) if j != i]
    np.testing.assert_allclose(float(m["sim_spread"]), np.std(sims), **TOL)
    # all embeddings equal (collapse): no spread
    same = np.broadcast_to(a[:1], a.shape)
    _, m = losses.task_loss("pair_score", same, np.broadcast_to(a[:1, None], (B, 1, E)), None, score=score)
    assert float(m["sim_spread"]) < 1e-6
