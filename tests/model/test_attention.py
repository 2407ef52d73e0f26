"""Attention kernels against the `xla` kernel and a NumPy brute force, on padded and packed segment ids."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax import model as qmodel, sharding
from qzhou_jax.model import ModelConfig, hidden_states, init_params, preset
from qzhou_jax.model.attention import attention, resolve_impl

B, L, H, KV, HD = 2, 160, 4, 2, 16  # L not a multiple of 128: splash pads internally


def _segments():
    """Row 0: right-padded single text; row 1: three packed texts, then padding; plus a left-padded variant."""
    seg = np.zeros((3, L), np.int32)
    seg[0, :100] = 1
    seg[1, :40], seg[1, 40:97], seg[1, 97:150] = 1, 2, 3
    seg[2, 30:] = 1
    return jnp.asarray(seg)


def _qkv(batch=3, dtype=jnp.float32, heads=H, kv=KV):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, L, heads, HD), dtype)
    k = jax.random.normal(keys[1], (batch, L, kv, HD), dtype)
    v = jax.random.normal(keys[2], (batch, L, kv, HD), dtype)
    return q, k, v


def _brute_force(q, k, v, seg, causal):
    q, k, v, seg = (np.asarray(x, np.float64) for x in (q, k, v, seg))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    mask = seg[:, None, :, None] == seg[:, None, None, :]
    if causal:
        mask = mask & np.tril(np.ones((q.shape[1],) * 2, bool))
    logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("causal", [False, True])
def test_xla_matches_brute_force(causal):
    q, k, v = _qkv()
    seg = _segments()
    got = attention(q, k, v, seg, causal=causal, impl="xla")
    np.testing.assert_allclose(got, _brute_force(q, k, v, seg, causal), atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_splash_interpret_matches_xla_values_and_grads(causal):
    q, k, v = _qkv()
    seg = _segments()
    want = attention(q, k, v, seg, causal=causal, impl="xla")
    got = attention(q, k, v, seg, causal=causal, impl="splash")
    np.testing.assert_allclose(got, want, atol=2e-5)

    weights = jax.random.normal(jax.random.key(3), want.shape)
    real = (seg > 0)[:, :, None, None]  # padding outputs are never pooled, so gradients flow from real tokens only

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.where(real, attention(q, k, v, seg, causal=causal, impl=impl), 0) * weights)
    g_want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    g_got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, atol=5e-5)


@pytest.mark.parametrize("mesh_shape,heads,kv", [((2, 2, 2), 4, 2), ((1, 2, 4), 4, 2), ((8, 1, 1), 4, 4)])
def test_splash_sharded_under_shard_map_matches_xla(mesh_shape, heads, kv):
    """Batch over (data, fsdp), heads over tensor; (1,2,4) has 2 KV heads on a tensor axis of 4 (K/V repeated)."""
    mesh = sharding.make_mesh(mesh_shape)
    cfg = ModelConfig(num_heads=heads, num_kv_heads=kv, hidden_size=heads * HD)
    rules = sharding.activation_rules(mesh, *qmodel.abstract_params(cfg))
    batch = 8
    q, k, v = _qkv(batch, heads=heads, kv=kv)
    seg = jnp.tile(_segments(), (3, 1))[:batch]
    want = attention(q, k, v, seg, causal=False, impl="xla")

    def run(q, k, v, seg):
        with nn.logical_axis_rules(rules):
            return attention(q, k, v, seg, causal=False, impl="splash")
    with jax.set_mesh(mesh):
        got = jax.jit(run)(q, k, v, seg)
        hlo = jax.jit(run).lower(q, k, v, seg).as_text()
    assert "shard_map" in hlo or "manual" in hlo.lower()  # really partitioned by hand, not by XLA
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_splash_model_matches_xla_model():
    cfg = preset("tiny")
    params = init_params(cfg, jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (3, L), 1, cfg.vocab_size)
    seg = _segments()
    want = hidden_states(params, cfg.replace(attention_impl="xla"), ids, segment_ids=seg)
    got = hidden_states(params, cfg.replace(attention_impl="splash"), ids, segment_ids=seg)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_matches_xla(causal):
    q, k, v = _qkv(dtype=jnp.bfloat16)
    seg = _segments()
    want = attention(q, k, v, seg, causal=causal, impl="xla").astype(jnp.float32)
    got = attention(q, k, v, seg, causal=causal, impl="cudnn").astype(jnp.float32)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-2)


def test_cudnn_refuses_fp32_and_auto_picks_by_platform():
    q, k, v = _qkv(1)
    with pytest.raises(ValueError, match="bf16"):
        attention(q, k, v, _segments()[:1], causal=False, impl="cudnn")
    assert resolve_impl("auto", jnp.float32, "tpu") == "splash"
    assert resolve_impl("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_impl("auto", jnp.float32, "gpu") == "xla"
    assert resolve_impl("auto", jnp.bfloat16, "cpu") == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        ModelConfig(attention_impl="flash")
