"""Partial fine-tuning (model.trainable = "top:N"): the same forward values, gradients only above the frozen
layers, and frozen weights untouched by the optimizer (weight decay included)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qzhou_jax import model as qmodel
from qzhou_jax.train import optim
from qzhou_jax.model.config import frozen_layers_for


def _setup(scan, frozen=2):
    config = qmodel.preset("tiny", num_layers=4, scan_layers=scan)
    params = qmodel.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, config.vocab_size)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], jnp.int32)
    return config, config.replace(frozen_layers=frozen), params, ids, mask


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
    mask_tree = qmodel.trainable_mask(params, partial)
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
    tx, _ = optim.make_optimizer(cfg, 10, update_mask=lambda p: qmodel.trainable_mask(p, partial))
    state = tx.init(params)
    new = params
    for _ in range(3):
        grads = jax.grad(_loss)(new, partial, ids, mask)
        new, state = optim.apply_gradients(tx, grads, state, new)
    np.testing.assert_array_equal(np.asarray(new["embedding"]), np.asarray(params["embedding"]))
    for before, after in zip(jax.tree.leaves(params["layers"]), jax.tree.leaves(new["layers"])):
        np.testing.assert_array_equal(np.asarray(after[:3]), np.asarray(before[:3]))
        assert not np.array_equal(np.asarray(after[3:]), np.asarray(before[3:]))  # the top layer trained
    assert not np.array_equal(np.asarray(new["norm"]["scale"]), np.asarray(params["norm"]["scale"]))


def test_trainable_spec():
    assert frozen_layers_for("all", 30) == 0
    assert frozen_layers_for("top:8", 30) == 22
    assert frozen_layers_for("top:30", 30) == 0
    for bad in ("top:0", "top:31", "bottom:3", "top:x"):
        with pytest.raises(ValueError, match="trainable"):
            frozen_layers_for(bad, 30)
