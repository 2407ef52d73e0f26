"""Parity of the Flax Qwen2 encoder with transformers' PyTorch Qwen2Model on the same weights."""
import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax.hf.load import load_params
from qzhou_jax.model import ModelConfig, embed, hidden_states
from tests import oracle


def _batch(vocab, lengths, width, side, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = rng.integers(1, vocab, n)
        mask[row, cols] = 1
    return ids, mask


@pytest.mark.parametrize("name", sorted(oracle.SMALL_CONFIGS))
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_matches_transformers(tmp_path, name, attention, side):
    torch_model = oracle.make_hf_model(tmp_path, name)
    config = ModelConfig.from_hf(tmp_path, attention=attention)
    params = load_params(str(tmp_path), config)
    ids, mask = _batch(config.vocab_size, [11, 7, 3, 11], 11, side)

    expected = oracle.torch_hidden(torch_model, ids, mask, bidirectional=attention == "bidirectional")
    got = np.asarray(hidden_states(params, config, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= 1e-4

    ours = np.asarray(embed(jnp.asarray(got), jnp.asarray(mask)))
    theirs = oracle.torch_mean_pool(expected, mask)
    cosine = (ours * theirs).sum(-1)
    assert cosine.min() >= 0.99999


def test_unscanned_layers_and_remat_give_same_states(tmp_path):
    oracle.make_hf_model(tmp_path, "gqa")
    base = ModelConfig.from_hf(tmp_path)
    ids, mask = _batch(base.vocab_size, [9, 4], 9, "right")
    outs = []
    for cfg in (base, base.replace(scan_layers=False), base.replace(remat_policy="full")):
        params = load_params(str(tmp_path), cfg)
        outs.append(np.asarray(hidden_states(params, cfg, ids, mask)))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)


def test_bf16_compute_close_to_fp32(tmp_path):
    oracle.make_hf_model(tmp_path, "gqa")
    cfg = ModelConfig.from_hf(tmp_path)
    ids, mask = _batch(cfg.vocab_size, [10, 6], 10, "left")
    params = load_params(str(tmp_path), cfg)
    e32 = embed(hidden_states(params, cfg, ids, mask), mask)
    cfg16 = cfg.replace(dtype="bfloat16")
    e16 = embed(hidden_states(params, cfg16, ids, mask), mask)
    assert e16.dtype == jnp.float32
    assert float((e32 * e16).sum(-1).min()) > 0.99
