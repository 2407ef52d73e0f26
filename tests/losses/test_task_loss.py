"""losses/__init__.py, the public face: the registry by task name, task_loss's dispatch on batch.task with the one
Matryoshka wrapper, its errors, and jit / sharding with a Batch argument."""
import inspect

import jax
import numpy as np
import pytest

from qzhou_jax.batch import Batch
from qzhou_jax.batch_schema import TASK_FIELDS
from qzhou_jax.data.formats import TASK_TYPES
from qzhou_jax.losses import LOSSES, TASKS, LossConfig, matryoshka, task_loss
from tests.losses.references import (B, C, E, TOL, _cos, make_batch, make_labels, ref_classification, ref_cosent,
                                     ref_retrieval)


def _fields(seed):
    """Every label field a loss reads, for one batch of make_batch(seed)."""
    a, c, valid = make_batch(seed)
    score = np.random.default_rng(seed).integers(0, 3, B).astype(np.float32)
    return a, c, dict(cand_valid=valid, score=score, labels=make_labels(seed))


# ------------------------------------------------------------------------------------------- the registry


def test_every_task_type_has_one_registered_loss_with_the_common_signature():
    # One loss and one list of required batch fields per task type of the data.
    assert TASKS == tuple(LOSSES) and set(TASKS) == set(TASK_TYPES) == set(TASK_FIELDS)
    a, c, fields = _fields(30)
    cfg = LossConfig(tau=0.05, cosent_tau=0.05)
    for task in TASKS:
        loss_fn = LOSSES[task]
        assert list(inspect.signature(loss_fn).parameters) == ["a", "c", "batch", "config"], task
        direct, direct_metrics = loss_fn(a, c, Batch(**fields), cfg)
        loss, metrics = task_loss(a, c, Batch(**fields, task=task), cfg)
        assert float(loss) == float(direct) and float(metrics["loss"]) == float(direct), task
        assert set(metrics) == {"loss", *direct_metrics}, task
        for name, value in direct_metrics.items():
            assert float(metrics[name]) == float(value), f"{task} {name}"


@pytest.mark.parametrize("task", TASKS)
def test_task_loss_applies_the_one_matryoshka_wrapper(task):
    a, c, fields = _fields(31)
    cfg = LossConfig(matryoshka_dims=(4, 8, E))
    batch = Batch(**fields, task=task)
    loss, metrics = task_loss(a, c, batch, cfg)
    want, want_metrics = matryoshka(LOSSES[task], cfg.matryoshka_dims)(a, c, batch, cfg)
    assert float(loss) == float(want)
    assert set(metrics) == {"loss", *want_metrics} and {"loss@4", "loss@8", f"loss@{E}"} <= set(metrics)
    for name, value in want_metrics.items():
        assert float(metrics[name]) == float(value), name


def test_task_loss_dispatch_and_metrics():
    a, c, valid = make_batch(15)
    labels = make_labels(15)
    cfg = LossConfig(tau=0.05, doc_doc=True)
    loss, metrics = task_loss(a, c, Batch(cand_valid=valid, task="retrieval"), cfg)
    np.testing.assert_allclose(float(loss), ref_retrieval(a, c, valid, tau=0.05, doc_doc=True)[0], **TOL)
    # top-1 accuracy vs a loop over the paper-default denominator (query-doc and query-query terms)
    _, m = task_loss(a, c, Batch(cand_valid=valid, task="retrieval"), LossConfig())
    hits = [all(_cos(a[i], c[i, 0]) >= _cos(a[i], x)
                for x in [c[j, k] for j in range(B) for k in range(C) if valid[j, k] and (j, k) != (i, 0)]
                + [a[j] for j in range(B) if j != i]) for i in range(B)]
    np.testing.assert_allclose(float(m["accuracy"]), np.mean(hits), atol=1e-7)

    loss, _ = task_loss(a, c, Batch(cand_valid=valid, labels=labels, task="classification"), cfg)
    np.testing.assert_allclose(float(loss), ref_classification(a, c, valid, labels, tau=0.05), **TOL)

    score = np.random.default_rng(15).integers(0, 3, B).astype(np.float32)
    loss, m = task_loss(a, c[:, :1], Batch(score=score, task="pair_score"), LossConfig(cosent_tau=0.05))
    np.testing.assert_allclose(float(loss), ref_cosent(a, c[:, 0], score, tau=0.05), **TOL)
    assert 0.0 <= float(m["pair_accuracy"]) <= 1.0

    mcfg = LossConfig(matryoshka_dims=[8, E])
    loss, m = task_loss(a, c, Batch(cand_valid=valid, task="retrieval"), mcfg)
    np.testing.assert_allclose(float(loss), (float(m["loss@8"]) + float(m[f"loss@{E}"])) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(m[f"loss@{E}"]), ref_retrieval(a, c, valid)[0], **TOL)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_or_missing_task_names_the_known_ones():
    a, c, valid = make_batch(32)
    with pytest.raises(ValueError, match=r"unknown task 'sts'.*'retrieval', 'pair_score', 'classification'"):
        task_loss(a, c, Batch(cand_valid=valid, task="sts"))
    with pytest.raises(ValueError, match=r"batch\.task is None.*'retrieval', 'pair_score', 'classification'"):
        task_loss(a, c, Batch(cand_valid=valid))


def test_a_missing_required_field_is_named():
    a, c, valid = make_batch(33)
    with pytest.raises(ValueError, match=r"needs `score`.*batch\.score is None"):
        task_loss(a, c[:, :1], Batch(task="pair_score"))
    with pytest.raises(ValueError, match=r"needs `labels`.*batch\.labels is None"):
        task_loss(a, c, Batch(cand_valid=valid, task="classification"))
    with pytest.raises(ValueError, match=r"needs `labels`"):  # under jit too: raised while tracing
        jax.jit(task_loss)(a, c, Batch(cand_valid=valid, task="classification"))


# ------------------------------------------------------------------------------------------ jit, sharding


def test_jit_takes_a_batch_and_compiles_once_per_task():
    """batch.task is pytree metadata: the same arrays under another task retrace (another loss), the same task
    with new values does not."""
    a, c, fields = _fields(34)
    cfg = LossConfig()
    traced = []

    def fn(a, c, batch):
        traced.append(batch.task)
        return task_loss(a, c, batch, cfg)
    jitted = jax.jit(fn)
    for task in TASKS + TASKS:
        for seed in (34, 35):
            a, c, fields = _fields(seed)
            got, metrics = jitted(a, c, Batch(**fields, task=task))
            want, want_metrics = task_loss(a, c, Batch(**fields, task=task), cfg)
            np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=task)
            assert set(metrics) == set(want_metrics), task
    assert traced == list(TASKS)
    # config as a static argument of task_loss itself
    step = jax.jit(task_loss, static_argnames="config")
    got, _ = step(a, c, Batch(**fields, task="retrieval"), config=LossConfig(tau=0.05))
    np.testing.assert_allclose(float(got), ref_retrieval(a, c, fields["cand_valid"], tau=0.05)[0], **TOL)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_jit_and_sharded_global_batch_match_eager(axis_type):
    """In-batch negatives must span devices: the sharded jit result equals the single-device loss."""
    n_dev = len(jax.devices())
    a, c, valid = make_batch(16, b=n_dev)
    labels = make_labels(16, b=n_dev)
    score = np.random.default_rng(16).integers(0, 3, n_dev).astype(np.float32)
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    shard = lambda x: jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))  # noqa: E731
    step = jax.jit(task_loss, static_argnames=("config",))
    cfg = LossConfig(doc_query=True, doc_doc=True, false_negative_margin=0.1)
    cases = [("retrieval", c, {}), ("classification", c, {"labels": labels}), ("pair_score", c[:, :1], {"score": score})]
    for task, cands, kw in cases:
        fields = dict(cand_valid=valid[:, :cands.shape[1]], **kw)
        sharded = Batch(**{k: shard(v) for k, v in fields.items()}, task=task)
        got, metrics = step(shard(a), shard(cands), sharded, config=cfg)
        want, want_metrics = task_loss(a, cands, Batch(**fields, task=task), cfg)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=task)
        for name, value in want_metrics.items():
            np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-6, err_msg=f"{task} {name}")
