"""LoRA on the encoder: a fresh adapter (B = 0) is the base, merging equals the unmerged forward, only the
adapters are trainable (no gradient or optimizer state for the base), adapters shard like their kernels, dropout
only with an rng."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qzhou_jax import model as qmodel, sharding
from qzhou_jax.train import optim
from qzhou_jax.model import lora
from qzhou_jax.model.config import LORA_TARGETS
from qzhou_jax.train.step import create_state


def _setup(scan=True, rank=4, targets=LORA_TARGETS, dropout=0.0):
    base = qmodel.preset("tiny", num_layers=3, scan_layers=scan)
    config = base.replace(lora_rank=rank, lora_alpha=8.0, lora_dropout=dropout, lora_targets=tuple(targets))
    params = qmodel.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, base.vocab_size)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], jnp.int32)
    return base, config, params, ids, mask


def _randomise_b(params, seed=2):
    adapters, rest = lora.split_adapters(params)
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    adapters = jax.tree.unflatten(tree, [0.05 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return lora.join(rest, adapters)


@pytest.mark.parametrize("scan", [True, False])
def test_fresh_adapter_is_the_base_exactly(scan):
    base, config, params, ids, mask = _setup(scan)
    _, plain = lora.split_adapters(params)
    assert lora.count(params) > 0
    rank_axis = {"lora_a": -1, "lora_b": 1 if scan else 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(lora.split_adapters(params)[0]):
        assert leaf.shape[rank_axis[path[-1].key]] == 4, path
    np.testing.assert_array_equal(np.asarray(qmodel.embed_tokens(params, config, ids, mask)),
                                  np.asarray(qmodel.embed_tokens(plain, base, ids, mask)))


@pytest.mark.parametrize("scan", [True, False])
def test_merged_weights_give_the_unmerged_forward(scan):
    base, config, params, ids, mask = _setup(scan)
    params = _randomise_b(params)
    unmerged = np.asarray(qmodel.hidden_states(params, config, ids, mask))
    merged_params, merged_config = qmodel.merge_lora(params, config)
    assert merged_config.lora_rank == 0 and not lora.split_adapters(merged_params)[0]
    merged = np.asarray(qmodel.hidden_states(merged_params, merged_config, ids, mask))
    np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-4)
    _, plain = lora.split_adapters(params)
    assert np.abs(np.asarray(qmodel.hidden_states(plain, base, ids, mask)) - unmerged).max() > 1e-2  # B matters


def test_merge_formula_per_projection():
    """W' = W + (alpha / r) A B, checked on one projection in HF layout: W_hf' = W_hf + s B_hf A_hf."""
    _, config, params, _, _ = _setup(scan=True)
    params = _randomise_b(params)
    merged, _ = qmodel.merge_lora(params, config)
    node = params["layers"]["self_attn"]["o_proj"]
    h, hd, d = node["kernel"].shape[1:]
    for i in range(config.num_layers):
        w_hf = np.asarray(node["kernel"][i]).reshape(h * hd, d).T
        a_hf = np.asarray(node["lora_a"][i]).reshape(h * hd, -1).T  # [r, in]
        b_hf = np.asarray(node["lora_b"][i]).reshape(-1, d).T       # [out, r]
        expected = w_hf + config.lora_alpha / config.lora_rank * b_hf @ a_hf
        got = np.asarray(merged["layers"]["self_attn"]["o_proj"]["kernel"][i]).reshape(h * hd, d).T
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_init_follows_peft():
    _, config, params, _, _ = _setup(scan=True, rank=8)
    q = params["layers"]["self_attn"]["q_proj"]
    down = params["layers"]["mlp"]["down_proj"]
    assert not np.any(np.asarray(q["lora_b"])) and not np.any(np.asarray(down["lora_b"]))
    for a, fan_in in ((q["lora_a"], config.hidden_size), (down["lora_a"], config.intermediate_size)):
        a = np.asarray(a)
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound  # U(-1/sqrt(in), 1/sqrt(in))
        assert abs(a.mean()) < 0.1 * bound
    assert config.lora_scale == 1.0  # alpha 8 / rank 8


def test_only_targets_get_adapters():
    _, config, params, _, _ = _setup(targets=("q_proj", "down_proj"))
    attn, mlp = params["layers"]["self_attn"], params["layers"]["mlp"]
    assert "lora_a" in attn["q_proj"] and "lora_a" in mlp["down_proj"]
    assert all("lora_a" not in attn[n] for n in ("k_proj", "v_proj", "o_proj"))
    assert all("lora_a" not in mlp[n] for n in ("gate_proj", "up_proj"))
    with pytest.raises(ValueError, match="lora_targets"):
        config.replace(lora_targets=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="partial"):
        config.replace(frozen_layers=1)


def test_adapters_stay_float32_over_a_bfloat16_base():
    """peft's autocast_adapter_dtype: a bf16 frozen base, float32 adapters (and so float32 optimizer moments)."""
    base = qmodel.preset("tiny", num_layers=2, param_dtype="bfloat16")
    params = qmodel.init_params(base.replace(lora_rank=2), jax.random.key(0))
    adapters, rest = lora.split_adapters(params)
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}
    assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(rest)}
    merged, _ = qmodel.merge_lora(params, base.replace(lora_rank=2))
    assert merged["layers"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16  # serving keeps the base's dtype


def test_adapters_carry_logical_axes_and_shard_like_their_kernels():
    _, config, _, _, _ = _setup(scan=True, rank=4)
    abstract, logical = qmodel.abstract_params(config)
    q = logical["layers"]["self_attn"]["q_proj"]
    o = logical["layers"]["self_attn"]["o_proj"]
    assert tuple(q["lora_a"]) == ("layers", "embed", "lora_rank")
    assert tuple(q["lora_b"]) == ("layers", "lora_rank", "heads", "head_dim")
    assert tuple(o["lora_a"]) == ("layers", "heads", "head_dim", "lora_rank")
    assert tuple(o["lora_b"]) == ("layers", "lora_rank", "embed")
    mesh = sharding.make_mesh((1, 2, 2), jax.devices()[:4])
    rules = sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(config))
    shard = rules.tree_shardings(logical)["layers"]["self_attn"]
    assert tuple(shard["q_proj"]["lora_a"].spec) == (None, "fsdp", None)          # embed like the kernel's
    assert tuple(shard["q_proj"]["lora_b"].spec) == (None, None, "tensor", None)  # heads like the kernel's
    assert tuple(shard["q_proj"]["kernel"].spec) == (None, "fsdp", "tensor", None)


def test_base_gets_no_gradient_and_no_optimizer_state():
    _, config, params, ids, mask = _setup(scan=True)
    trainable, frozen = qmodel.partition(params, config)
    assert jax.tree.structure(trainable) == jax.tree.structure(lora.split_adapters(params)[0])
    assert "embedding" in frozen and "kernel" in frozen["layers"]["self_attn"]["q_proj"]
    jax.tree.map(np.testing.assert_array_equal, qmodel.combine(trainable, frozen, config), params)

    def loss(t):
        emb = qmodel.embed_tokens(qmodel.combine(t, frozen, config), config, ids, mask)
        return jnp.sum(emb[0] * emb[1])
    grads = jax.grad(loss)(trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    b_grads = [np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads) if "lora_b" in str(p)]
    assert all(np.any(g) for g in b_grads)  # B = 0 at init: A's gradient is 0, B's is not
    cfg = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, decay="constant", final_lr_ratio=0.0, b1=0.9,
                                         b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1))
    tx, _ = optim.make_optimizer(cfg, 10)
    state = create_state(params, tx, config)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(trainable))
    assert 2 * adapter_bytes <= state_bytes < 2 * adapter_bytes + 1024  # Adam's two moments, of the adapters only


def test_dropout_only_with_an_rng():
    _, config, params, ids, mask = _setup(dropout=0.5)
    params = _randomise_b(params)
    plain = np.asarray(qmodel.embed_tokens(params, config, ids, mask))
    np.testing.assert_array_equal(plain, np.asarray(qmodel.embed_tokens(params, config, ids, mask)))
    one = np.asarray(qmodel.embed_tokens(params, config, ids, mask, rng=jax.random.key(3)))
    again = np.asarray(qmodel.embed_tokens(params, config, ids, mask, rng=jax.random.key(3)))
    other = np.asarray(qmodel.embed_tokens(params, config, ids, mask, rng=jax.random.key(4)))
    np.testing.assert_array_equal(one, again)
    assert np.abs(one - plain).max() > 1e-4 and np.abs(one - other).max() > 1e-4


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full")])
def test_backward_computes_no_base_weight_gradients(scan, remat):
    """Only the input gradients pass through the frozen projections: the step's FLOPs drop from ~3x the forward
    (full fine-tuning) to ~2x (LoRA). XLA's cost analysis counts a scan body once, the same for both."""
    base, config, params, ids, mask = _setup(scan, rank=2)
    base, config = base.replace(remat_policy=remat), config.replace(remat_policy=remat)

    def flops(cfg, p):
        trainable, frozen = qmodel.partition(p, cfg)

        def loss(t, f):
            emb = qmodel.embed_tokens(qmodel.combine(t, f, cfg), cfg, ids, mask)
            return jnp.sum(emb[0] * emb[1])
        cost = jax.jit(jax.grad(loss)).lower(trainable, frozen).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]
    full = flops(base, lora.split_adapters(params)[1])
    adapters = flops(config, params)
    assert adapters < 0.85 * full, (adapters, full)
