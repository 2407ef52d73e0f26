"""losses/pair_score.py: CoSENT vs. the float64 loop reference (tests/losses/references.py)."""
import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax.batch import Batch
from qzhou_jax.losses import LossConfig, cosent
from tests.losses.references import TOL, call, make_batch, ref_cosent


@pytest.mark.parametrize("kind", ["nli", "sts", "all_equal"])
@pytest.mark.parametrize("tau", [0.02, 0.05])
def test_cosent_matches_loop_reference(kind, tau):
    a, c, _ = make_batch(5, b=8, n_cand=1, noise=0.8)
    rng = np.random.default_rng(6)
    score = {"nli": rng.integers(0, 3, 8), "sts": rng.uniform(0, 5, 8), "all_equal": np.ones(8)}[kind]
    got = call(cosent, a, c, score=jnp.asarray(score, jnp.float32), config=LossConfig(cosent_tau=tau))
    want = ref_cosent(a, c[:, 0], score.astype(np.float32), tau=tau)
    np.testing.assert_allclose(float(got), want, **TOL)
    if kind == "all_equal":
        assert float(got) == 0.0  # no ordered pair: log(1)


def test_cosent_metrics():
    a, c, _ = make_batch(6, b=8, n_cand=1, noise=0.8)
    score = np.random.default_rng(6).integers(0, 3, 8).astype(np.float32)
    _, m = cosent(a, c, Batch(score=score), LossConfig())
    s = np.sum(a.astype(np.float64) * c[:, 0], axis=1)
    ordered = [(i, k) for i in range(8) for k in range(8) if score[i] > score[k]]
    assert float(m["num_ordered_pairs"]) == len(ordered)
    np.testing.assert_allclose(float(m["pair_accuracy"]), np.mean([s[i] > s[k] for i, k in ordered]), atol=1e-7)
    assert "masked_duplicates" not in m


def test_cosent_needs_score():
    a, c, _ = make_batch(7, n_cand=1)
    with pytest.raises(ValueError, match=r"'pair_score' needs `score`.*batch\.score is None"):
        cosent(a, c, Batch(), LossConfig())
