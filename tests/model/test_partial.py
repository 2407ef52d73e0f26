"""Partial fine-tuning (model.trainable = "top:N" / "layers"): the same forward values, gradients only above the
frozen layers, frozen weights without optimizer state and untouched by training (weight decay included), and a
backward pass that stops at the lowest trainable layer (fewer FLOPs)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qzhou_jax import model as qmodel
from qzhou_jax.train import optim
from qzhou_jax.model.config import frozen_layers_for, trainable_fields
from qzhou_jax.train.step import create_state


def _setup(scan, frozen=2):
    config = qmodel.preset("tiny", num_layers=4, scan_layers=scan)
    params = qmodel.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, config.vocab_size)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], jnp.int32)
    return config, config.replace(frozen_layers=frozen, freeze_embedding=True), params, ids, mask


def _mask_tree(params, config):
    """1 where `partition` says trainable, 0 where frozen, in the params' layout (independent of the model code:
    the embedding and layers below k frozen; layers from k and the final norm trained)."""
    k = config.frozen_layers

    def mask(path, leaf):
        top = str(getattr(path[0], "key", path[0]))
        if top == "embedding":
            return np.zeros(leaf.shape)
        if top == "layers":
            return np.broadcast_to((np.arange(leaf.shape[0]) >= k).reshape((-1,) + (1,) * (leaf.ndim - 1)),
                                   leaf.shape).astype(float)
        if top.startswith("layers_"):
            return np.full(leaf.shape, float(int(top.split("_")[1]) >= k))
        return np.ones(leaf.shape)
    return jax.tree_util.tree_map_with_path(mask, params)


def _loss(params, config, ids, mask):
    emb = qmodel.embed_tokens(params, config, ids, mask)
    return jnp.sum(emb[0] * emb[1]) - jnp.sum(emb[1] * emb[2])


@pytest.mark.parametrize("scan", [True, False])
def test_same_values_and_gradients_only_above_the_frozen_layers(scan):
    full, partial, params, ids, mask = _setup(scan)
    np.testing.assert_array_equal(np.asarray(qmodel.hidden_states(params, full, ids, mask)),
                                  np.asarray(qmodel.hidden_states(params, partial, ids, mask)))
    g_full = jax.grad(_loss)(params, full, ids, mask)
    g_part = jax.grad(_loss)(params, partial, ids, mask)
    mask_tree = _mask_tree(params, partial)
    for (path, gf), gp, m in zip(jax.tree_util.tree_leaves_with_path(g_full), jax.tree.leaves(g_part),
                                 jax.tree.leaves(mask_tree)):
        m = np.broadcast_to(np.asarray(m), gf.shape)
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(gp)[m == 1], np.asarray(gf)[m == 1], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        assert not np.any(np.asarray(gp)[m == 0]), f"{name}: frozen weights got a gradient"
        if m.any() and (m == 0).any():
            assert np.any(np.asarray(gf)[m == 0]), f"{name}: the full model's gradient is zero there too"
    assert np.any(np.asarray(g_full["embedding"])) and not np.any(np.asarray(g_part["embedding"]))


def test_frozen_weights_bit_identical_after_updates():
    _, partial, params, ids, mask = _setup(scan=True, frozen=3)
    cfg = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, decay="constant", final_lr_ratio=0.0, b1=0.9,
                                         b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1))
    tx, _ = optim.make_optimizer(cfg, 10)
    state = create_state(params, tx, partial).opt_state
    trainable, frozen = qmodel.partition(params, partial)
    assert "embedding" in frozen and "embedding" not in trainable
    assert all(x.shape[0] == 1 for x in jax.tree.leaves(trainable["layers"]))  # the optimizer sees the top layer
    assert sum(x.nbytes for x in jax.tree.leaves(state)) < 2.1 * sum(x.nbytes for x in jax.tree.leaves(trainable))
    new = params
    for _ in range(3):
        trainable, frozen = qmodel.partition(new, partial)
        grads = jax.grad(lambda t: _loss(qmodel.combine(t, frozen, partial), partial, ids, mask))(trainable)
        trainable, state = optim.apply_gradients(tx, grads, state, trainable)
        new = qmodel.write_back(new, trainable, partial)
    np.testing.assert_array_equal(np.asarray(new["embedding"]), np.asarray(params["embedding"]))
    for before, after in zip(jax.tree.leaves(params["layers"]), jax.tree.leaves(new["layers"])):
        np.testing.assert_array_equal(np.asarray(after[:3]), np.asarray(before[:3]))
        assert not np.array_equal(np.asarray(after[3:]), np.asarray(before[3:]))  # the top layer trained
    assert not np.array_equal(np.asarray(new["norm"]["scale"]), np.asarray(params["norm"]["scale"]))


def test_trainable_spec():
    assert frozen_layers_for("all", 30) == 0
    assert frozen_layers_for("top:8", 30) == 22
    assert frozen_layers_for("top:30", 30) == 0
    assert trainable_fields("top:30", 30) == trainable_fields("layers", 30) == dict(frozen_layers=0,
                                                                                   freeze_embedding=True)
    assert trainable_fields("all", 30) == dict(frozen_layers=0, freeze_embedding=False)
    for bad in ("top:0", "top:31", "bottom:3", "top:x"):
        with pytest.raises(ValueError, match="trainable"):
            frozen_layers_for(bad, 30)


@pytest.mark.parametrize("scan", [True, False])
def test_layers_mode_freezes_only_the_embedding(scan):
    full, _, params, ids, mask = _setup(scan)
    config = full.replace(freeze_embedding=True)
    trainable, frozen = qmodel.partition(params, config)
    assert list(frozen) == ["embedding"]
    g = jax.grad(lambda t: _loss(qmodel.combine(t, frozen, config), config, ids, mask))(trainable)
    g_full = jax.grad(_loss)(params, full, ids, mask)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves({k: v for k, v in g_full.items() if k != "embedding"})):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _grad_flops(config, params, ids, mask):
    trainable, frozen = qmodel.partition(params, config)
    fn = jax.jit(jax.grad(lambda t, f: _loss(qmodel.combine(t, f, config), config, ids, mask)))
    cost = fn.lower(trainable, frozen).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_backward_stops_at_the_lowest_trainable_layer():
    """Unscanned layers, so XLA's cost analysis counts every layer (a scan body is counted once): training the
    top layer of 4 costs the forward of all 4 plus the backward of one (~5/12 of full training's 4 + 8)."""
    full, _, params, ids, mask = _setup(scan=False)
    top1 = _grad_flops(full.replace(frozen_layers=3, freeze_embedding=True), params, ids, mask)
    full_flops = _grad_flops(full, params, ids, mask)
    assert top1 < 0.6 * full_flops, (top1, full_flops)
