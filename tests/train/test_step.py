"""The sharded train step: mesh-independence of loss and gradients, sharding of params, GradCache equivalence
and its flat activation memory."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax import batch as batch_lib, losses, sharding
from qzhou_jax.batch import Batch
from qzhou_jax import model as qmodel
from qzhou_jax.train.step import (abstract_state, create_state, gradcache_balance, gradcache_loss_and_grads, make_step_fn, mesh_context, plain_loss_and_grads)

CFG = qmodel.ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=64)
LOSS = losses.LossConfig()


def make_batch(task, b=8, c=3, la=6, lc=10, seed=0):
    rng = np.random.default_rng(seed)
    la_real = rng.integers(2, la + 1, b)
    lc_real = rng.integers(2, lc + 1, (b, c))
    anchor_mask = (np.arange(la)[None] < la_real[:, None]).astype(np.int32)
    cand_mask = (np.arange(lc)[None, None] < lc_real[..., None]).astype(np.int32)
    if task == "pair_score":
        cand_mask = cand_mask[:, :1]
        c = 1
    valid = np.ones((b, c), bool)
    if task != "pair_score":
        valid[::3, -1] = False
    return {
        "anchor_ids": rng.integers(1, CFG.vocab_size, (b, la)).astype(np.int32) * anchor_mask,
        "anchor_mask": anchor_mask,
        "cand_ids": rng.integers(1, CFG.vocab_size, (b, c, lc)).astype(np.int32) * cand_mask,
        "cand_mask": cand_mask,
        "cand_valid": valid,
        "score": rng.uniform(0, 5, b).astype(np.float32),
        "labels": rng.integers(0, 3, (b, 1 + c)).astype(np.int32),
        "task": task,
    }


PARAMS = qmodel.init_params(CFG, jax.random.key(0))


def _sharded_loss_and_grads(mesh_shape, task, batch):
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:int(np.prod(mesh_shape))])
    rules = sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(CFG))
    abstract, logical = qmodel.abstract_params(CFG)
    p_shardings = rules.tree_shardings(logical)
    params = jax.device_put(PARAMS, p_shardings)
    typed = Batch.from_host(batch)
    b_sh = batch_lib.shardings(rules, typed)

    def fn(p, b):
        with flax.linen.logical_axis_rules(rules.logical_axis_rules()):
            loss, _, grads = plain_loss_and_grads(p, CFG, LOSS, b)
        return loss, grads
    with mesh_context(mesh):
        loss, grads = jax.jit(fn, in_shardings=(p_shardings, b_sh),
                              out_shardings=(rules.replicated(), p_shardings))(params, jax.device_put(typed, b_sh))
    return loss, grads, params


def assert_grads_close(grads, ref, tol=1e-5):
    """Max abs difference within tol of each leaf's scale (1/tau = 50 makes gradients large)."""
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        g, r = np.asarray(g), np.asarray(r)
        assert np.abs(g - r).max() <= tol * max(1.0, np.abs(r).max()), np.abs(g - r).max()


@pytest.mark.parametrize("task,shapes", [
    ("retrieval", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 1)]),
    pytest.param("pair_score", [(8, 1, 1), (1, 8, 1), (2, 2, 2)], marks=pytest.mark.slow),
    pytest.param("classification", [(8, 1, 1), (1, 8, 1), (2, 2, 2)], marks=pytest.mark.slow),
])
def test_loss_and_grads_do_not_depend_on_mesh(task, shapes):
    batch = make_batch(task)
    ref_loss, _, ref_grads = plain_loss_and_grads(PARAMS, CFG, LOSS, Batch.from_host(batch))
    for shape in shapes:
        loss, grads, _ = _sharded_loss_and_grads(shape, task, batch)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-5)
        assert_grads_close(grads, ref_grads)


def test_params_are_sharded_as_the_rules_say():
    _, _, params = _sharded_loss_and_grads((1, 4, 2), "retrieval", make_batch("retrieval"))
    P = jax.sharding.PartitionSpec
    layers = params["layers"]
    assert layers["self_attn"]["q_proj"]["kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert layers["mlp"]["down_proj"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")
    assert params["embedding"].sharding.spec == P("tensor", "fsdp")
    assert layers["input_layernorm"]["scale"].sharding.spec == P(None, None)
    # Each device holds 1/8 of an MLP kernel.
    up = layers["mlp"]["up_proj"]["kernel"]
    assert up.addressable_shards[0].data.size == up.size // 8


@pytest.mark.parametrize("task", ["retrieval", "classification", "pair_score"])
def test_gradcache_matches_plain_gradients(task):
    batch = Batch.from_host(make_batch(task, b=8))
    loss, _, grads = plain_loss_and_grads(PARAMS, CFG, LOSS, batch)
    gc_loss, _, gc_grads = jax.jit(functools.partial(gradcache_loss_and_grads, config=CFG, loss_config=LOSS,
                                                     num_chunks=4))(PARAMS, batch=batch)
    np.testing.assert_allclose(float(gc_loss), float(loss), rtol=1e-6)
    assert_grads_close(gc_grads, grads)


def _temp_bytes(fn, batch):
    compiled = jax.jit(fn).lower(PARAMS, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_gradcache_activation_memory_is_flat_in_batch_size():
    big_cfg = CFG
    plain = lambda p, b: plain_loss_and_grads(p, big_cfg, LOSS, b)[2]  # noqa: E731
    small, large = (Batch.from_host(make_batch("retrieval", b=b, lc=64)) for b in (8, 32))
    gc = lambda chunk: lambda p, b: gradcache_loss_and_grads(  # noqa: E731
        p, big_cfg, LOSS, b, b.size // chunk)[2]
    plain_small, plain_large = _temp_bytes(plain, small), _temp_bytes(plain, large)
    gc_small, gc_large = _temp_bytes(gc(4), small), _temp_bytes(gc(4), large)
    assert plain_large > 2.5 * plain_small  # activations grow with the batch...
    assert gc_large < 1.5 * gc_small        # ...GradCache's stay ~flat (only embeddings grow)
    assert gc_large < plain_large / 2


def test_train_step_updates_and_skips_nonfinite():
    from ml_collections import ConfigDict
    from qzhou_jax.train import optim
    ocfg = ConfigDict(dict(lr=1e-3, warmup_steps=1, decay="linear", final_lr_ratio=0.0, b1=0.9, b2=0.999,
                           eps=1e-8, weight_decay=0.01, grad_clip=1.0, grad_accum_steps=1))
    tx, schedule = optim.make_optimizer(ocfg, 10)
    mesh = sharding.make_mesh((-1, 1, 1))
    rules = sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(CFG))
    _, st_sh = abstract_state(CFG, tx, rules)
    p_sh = st_sh.params
    batch = make_batch("retrieval")
    b_sh = batch_lib.shardings(rules, Batch.from_host(batch))
    step = make_step_fn(config=CFG, loss_config=LOSS, tx=tx, schedule=schedule, gradcache_chunks=0,
                        rules=rules, state_shardings=st_sh)
    state = jax.jit(lambda p: create_state(p, tx), out_shardings=st_sh)(jax.device_put(PARAMS, p_sh))
    before = np.asarray(state.params["embedding"])
    state, metrics = step(state, jax.device_put(Batch.from_host(batch), b_sh))  # warm-up starts at lr 0
    assert float(metrics["learning_rate"]) == 0.0
    state, metrics = step(state, jax.device_put(Batch.from_host(batch), b_sh))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(state.params["embedding"]), before)
    assert int(metrics["tokens"]) == int(batch["anchor_mask"].sum() + (batch["cand_mask"].sum(-1) *
                                                                       batch["cand_valid"]).sum())
    # A NaN score poisons nothing: the update is skipped and counted.
    # A NaN anywhere in the forward pass: the update is skipped (params untouched) and counted.
    kept = np.asarray(state.params["embedding"])
    nan_params = dict(state.params)
    nan_params["norm"] = {"scale": jax.device_put(state.params["norm"]["scale"] * jnp.nan,
                                                  state.params["norm"]["scale"].sharding)}
    state, metrics = step(state.replace(params=nan_params), jax.device_put(Batch.from_host(batch), b_sh))
    assert int(metrics["nonfinite_consecutive"]) == 1 and int(metrics["nonfinite_total"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    np.testing.assert_array_equal(np.asarray(state.params["embedding"]), kept)


def test_gradcache_balance_names_uneven_chunks():
    assert gradcache_balance(256, 4, 64) is None  # 64 rows per chunk over 64 devices
    message = gradcache_balance(256, 8, 64)  # 32 rows per chunk over 64 devices: half of them idle
    assert "32 rows" in message and "64 batch devices" in message and "e.g. 2, 4" in message
    assert "not divisible" in gradcache_balance(100, 8, 1)
    assert gradcache_balance(100, 0, 8) is None
