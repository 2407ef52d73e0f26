"""Merge formulas over param trees (qzhou_jax/merging/formulas.py) against the methods' definitions, written
independently here: linear = weighted mean; slerp = the great-circle interpolation (checked through its geometry);
TIES = trim, elect sign, disjoint mean, entry by entry."""
import numpy as np
import pytest

from qzhou_jax import merging


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_linear_is_the_weighted_mean():
    a, b, c = (_rng(i).normal(size=(5, 3)).astype(np.float32) for i in range(3))
    np.testing.assert_allclose(merging.linear([a, b, c], [1, 2, 1]), (a + 2 * b + c) / 4, rtol=1e-6)
    np.testing.assert_allclose(merging.linear([a, b], [0.3, 0.3], normalize=False), 0.3 * (a + b), rtol=1e-6)


def test_slerp_follows_the_great_circle():
    a = _rng(0).normal(size=(4, 6)).astype(np.float32)
    b = _rng(1).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(merging.slerp(0.0, a, b), a, atol=1e-6)
    np.testing.assert_allclose(merging.slerp(1.0, a, b), b, atol=1e-5)
    # Unit vectors: the result stays on the sphere, at angle t * omega from a and (1 - t) * omega from b.
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.sum(ua * ub))
    for t in (0.25, 0.5, 0.8):
        m = merging.slerp(t, ua, ub)
        assert np.linalg.norm(m) == pytest.approx(1.0, abs=1e-5)
        assert np.arccos(np.clip(np.sum(m * ua), -1, 1)) == pytest.approx(t * omega, abs=1e-4)
        assert np.arccos(np.clip(np.sum(m * ub), -1, 1)) == pytest.approx((1 - t) * omega, abs=1e-4)
    # Unnormalised inputs: the same coefficients applied to the original vectors (mergekit's slerp).
    t = 0.3
    expected = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    np.testing.assert_allclose(merging.slerp(t, a, b), expected, rtol=1e-4, atol=1e-5)
    # Nearly parallel: plain interpolation.
    np.testing.assert_allclose(merging.slerp(0.4, a, 2 * a), 0.6 * a + 0.8 * a, rtol=1e-5)


def _ties_reference(base, models, weights, density, scale=1.0):
    """TIES-Merging (Yadav et al. 2023) entry by entry, as the paper describes it."""
    trimmed = []
    for m in models:
        tau = (m - base).ravel()
        k = int(density * tau.size)
        threshold = np.sort(np.abs(tau))[::-1][k - 1]  # the k-th largest magnitude
        trimmed.append(np.where(np.abs(tau) >= threshold, tau, 0.0))
    out = base.ravel().astype(np.float64).copy()
    for j in range(out.size):
        values = [w * t[j] for w, t in zip(weights, trimmed)]
        elected = 1.0 if sum(values) >= 0 else -1.0
        agree = [(w, v) for w, v in zip(weights, values) if v != 0 and np.sign(v) == elected]
        if agree:
            out[j] += scale * sum(v for _, v in agree) / sum(w for w, _ in agree)
    return out.reshape(base.shape)


@pytest.mark.parametrize("density,weights", [(0.3, [1.0, 1.0, 1.0]), (1.0, [0.5, 1.0, 2.0]), (0.5, [1.0, 0.2, 1.0])])
def test_ties_matches_the_papers_procedure(density, weights):
    base = _rng(9).normal(size=(6, 5)).astype(np.float32)
    models = [base + _rng(i).normal(size=base.shape).astype(np.float32) for i in range(3)]
    got = merging.ties(base, models, weights, density)
    np.testing.assert_allclose(got, _ties_reference(base, models, weights, density), rtol=1e-5, atol=1e-6)
    got2 = merging.ties(base, models, weights, density, scale=0.5)
    np.testing.assert_allclose(got2, _ties_reference(base, models, weights, density, 0.5), rtol=1e-5, atol=1e-6)


def test_magnitude_trim_keeps_the_top_fraction():
    delta = np.array([[0.1, -3.0, 0.5], [2.0, -0.2, 0.05]], np.float32)
    np.testing.assert_array_equal(merging.magnitude_trim(delta, 0.34), [[0, -3.0, 0], [2.0, 0, 0]])
    with pytest.raises(ValueError, match="keeps no entry"):
        merging.magnitude_trim(delta, 0.1)


def test_trees_merge_per_layer_tensor():
    """A stacked [L, ...] leaf is L tensors: slerp's angle is taken per layer (not over the whole stack)."""
    a = {"layers": {"w": _rng(0).normal(size=(3, 4, 4)).astype(np.float32)}, "norm": np.ones(4, np.float32)}
    b = {"layers": {"w": _rng(1).normal(size=(3, 4, 4)).astype(np.float32) * np.array([1, 5, 9])[:, None, None]},
         "norm": np.full(4, 3.0, np.float32)}
    merged = merging.merge_trees("slerp", [a, b], [1, 1], stacked=merging.scanned_layers)
    for i in range(3):
        np.testing.assert_allclose(merged["layers"]["w"][i], merging.slerp(0.5, a["layers"]["w"][i],
                                                                           b["layers"]["w"][i]), rtol=1e-6)
    whole = merging.slerp(0.5, a["layers"]["w"], b["layers"]["w"])
    assert np.abs(whole - merged["layers"]["w"]).max() > 1e-3  # the per-layer angle matters
    np.testing.assert_allclose(merged["norm"], 2.0, rtol=1e-6)  # parallel vectors: interpolation


def test_tree_merge_errors():
    a = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="two or more"):
        merging.merge_trees("linear", [a])
    with pytest.raises(ValueError, match="exactly two"):
        merging.merge_trees("slerp", [a, a, a])
    with pytest.raises(ValueError, match="base"):
        merging.merge_trees("ties", [a, a])
    with pytest.raises(ValueError, match="shapes differ"):
        merging.merge_trees("linear", [a, {"w": np.ones((2, 3), np.float32)}])
    with pytest.raises(ValueError, match="method"):
        merging.merge_trees("dare", [a, a])
