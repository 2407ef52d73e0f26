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


def _torch_param_grads(torch_model, ids, mask, weights):
    """Gradients of sum(weights * mean-pooled last hidden state) in transformers, by HF tensor name."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    torch_model.zero_grad(set_to_none=True)
    for layer in torch_model.layers:
        layer.self_attn.is_causal = False
    ids_t, mask_t = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)
    embeds = torch_model.embed_tokens(ids_t)
    full = create_bidirectional_mask(torch_model.config, embeds, mask_t, allow_is_bidirectional_skip=False)
    hidden = torch_model(inputs_embeds=embeds, attention_mask={"full_attention": full}).last_hidden_state
    m = mask_t.unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1)
    (pooled * torch.as_tensor(weights)).sum().backward()
    return {n: p.grad.numpy() for n, p in torch_model.named_parameters()}


@pytest.mark.parametrize("scan", [True, False])
def test_parameter_gradients_match_transformers(tmp_path, scan):
    """Every weight's gradient (the hand-written projection backward in qwen2.project included) equals PyTorch
    autograd's on the same weights and loss."""
    import jax

    from qzhou_jax.hf.export import iter_hf_tensors

    torch_model = oracle.make_hf_model(tmp_path, "odd")  # GQA 5:1, odd sizes: in < out and in > out projections
    config = ModelConfig.from_hf(tmp_path, scan_layers=scan)
    params = load_params(str(tmp_path), config)
    ids, mask = _batch(config.vocab_size, [9, 5, 9], 9, "right")
    weights = np.random.default_rng(1).normal(size=(3, config.hidden_size)).astype(np.float32)

    def loss(p):
        hidden = hidden_states(p, config, jnp.asarray(ids), jnp.asarray(mask))
        m = jnp.asarray(mask, jnp.float32)[..., None]
        return ((hidden * m).sum(1) / m.sum(1) * weights).sum()

    grads = dict(iter_hf_tensors(jax.grad(loss)(params), config))
    expected = _torch_param_grads(torch_model, ids, mask, weights)
    assert set(grads) == {n for n in expected if not n.startswith("lm_head")}
    for name, g in grads.items():
        scale = np.abs(expected[name]).max() + 1e-6
        assert np.abs(g - expected[name]).max() <= 2e-4 * scale + 1e-6, name


def test_projection_backward_equals_autodiff_and_keeps_remat_dots(capsys):
    """qwen2.project's custom VJP gives autodiff's gradients for both operand orders (narrow / wide inputs,
    multi-axis kernels), and remat's `dots` policy still saves its output instead of recomputing it."""
    import jax
    from jax.ad_checkpoint import print_saved_residuals

    from qzhou_jax.model.qwen2 import _contract, project

    rng = np.random.default_rng(0)
    for x_shape, k_shape, in_axes in [((2, 5, 8), (8, 24), 1), ((2, 5, 24), (24, 8), 1),
                                      ((2, 5, 3, 4), (3, 4, 6), 2), ((3, 6), (6, 2, 5), 1)]:
        x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
        k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
        r = jnp.asarray(rng.normal(size=_contract(x, k, in_axes).shape), jnp.float32)
        ours = jax.grad(lambda a, b: (project(a, b, in_axes) * r).sum(), argnums=(0, 1))(x, k)
        ref = jax.grad(lambda a, b: (_contract(a, b, in_axes) * r).sum(), argnums=(0, 1))(x, k)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)

    x, w1, w2 = jnp.ones((2, 3, 4)), jnp.ones((4, 5)), jnp.ones((5, 4))
    f = lambda x, w1, w2: jnp.sin(project(jnp.sin(project(x, w1, 1)), w2, 1)).sum()  # noqa: E731
    print_saved_residuals(jax.checkpoint(f, policy=jax.checkpoint_policies.checkpoint_dots), x, w1, w2)
    assert capsys.readouterr().out.count("output of dot_general") == 2
