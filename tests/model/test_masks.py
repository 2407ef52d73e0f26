"""Mask semantics: padding invariance, bidirectionality vs causality, packed segments."""
import jax
import jax.numpy as jnp
import numpy as np

from qzhou_jax.model import embed, hidden_states, init_params, preset, segment_mean_pool
from qzhou_jax.model import pooling
from qzhou_jax.model.masks import positions_from_segments

CFG = preset("tiny")
PARAMS = init_params(CFG, jax.random.key(1))


def _embed(ids, mask, cfg=CFG):
    return np.asarray(embed(hidden_states(PARAMS, cfg, jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)))


def test_positions_restart_per_segment():
    seg = jnp.array([[0, 0, 1, 1, 1], [1, 1, 2, 2, 0], [1, 2, 2, 3, 3]])
    np.testing.assert_array_equal(positions_from_segments(seg),
                                  [[0, 0, 0, 1, 2], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1]])


def test_padding_side_and_batch_mates_do_not_change_embedding():
    text = [5, 17, 42, 7, 99]
    alone = _embed([text], [[1] * 5])
    left = _embed([[0, 0, 0] + text, [1, 2, 3, 4, 5, 6, 7, 8]], [[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    right = _embed([text + [0, 0, 0], [8, 7, 6, 5, 4, 3, 2, 1]], [[1] * 5 + [0] * 3, [1] * 8])
    np.testing.assert_allclose(left[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(right[0], alone[0], atol=1e-5)


def test_later_token_changes_earlier_states_only_when_bidirectional():
    a = jnp.array([[3, 4, 5, 6, 7]])
    b = a.at[0, 4].set(100)
    mask = jnp.ones_like(a)
    for mode, changes in (("bidirectional", True), ("causal", False)):
        cfg = CFG.replace(attention=mode)
        ha = hidden_states(PARAMS, cfg, a, mask)
        hb = hidden_states(PARAMS, cfg, b, mask)
        diff = float(jnp.abs(ha[0, :4] - hb[0, :4]).max())
        assert (diff > 1e-4) == changes, (mode, diff)


def test_packed_segments_equal_texts_alone():
    t1, t2 = [5, 17, 42], [8, 9, 10, 11]
    packed = jnp.array([t1 + t2 + [0]])
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    for mode in ("bidirectional", "causal"):
        cfg = CFG.replace(attention=mode)
        hidden = hidden_states(PARAMS, cfg, packed, segment_ids=seg)
        pooled = pooling.l2_normalize(segment_mean_pool(hidden, seg, 2))[0]
        alone = [_embed([t], [[1] * len(t)], cfg)[0] for t in (t1, t2)]
        np.testing.assert_allclose(pooled[0], alone[0], atol=1e-5)
        np.testing.assert_allclose(pooled[1], alone[1], atol=1e-5)


def test_last_token_pool_both_sides():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
    np.testing.assert_array_equal(pooling.last_token_pool(h, mask), np.stack([h[0, 2], h[1, 3]]))


def test_matryoshka_truncation_renormalises():
    h = jax.random.normal(jax.random.key(0), (3, 5, 16))
    mask = jnp.ones((3, 5), jnp.int32)
    full = pooling.mean_pool(h, mask)
    small = embed(h, mask, dim=4)
    np.testing.assert_allclose(small, full[:, :4] / np.linalg.norm(full[:, :4], axis=-1, keepdims=True), atol=1e-6)
