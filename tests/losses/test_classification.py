"""losses/classification.py: classification InfoNCE vs. the float64 loop reference (tests/losses/references.py)."""
import jax
import numpy as np
import pytest

from qzhou_jax.batch import Batch
from qzhou_jax.losses import LossConfig, classification_infonce
from tests.losses.references import TOL, call, make_batch, make_labels, ref_classification


@pytest.mark.parametrize("seed", [7, 8, 9])
@pytest.mark.parametrize("tau", [0.02, 0.1])
def test_classification_matches_loop_reference(seed, tau):
    a, c, valid = make_batch(seed)
    labels = make_labels(seed)
    got = call(classification_infonce, a, c, cand_valid=valid, labels=labels, config=LossConfig(tau=tau))
    want = ref_classification(a, c, valid, labels, tau=tau)
    np.testing.assert_allclose(float(got), want, **TOL)


def test_classification_excludes_other_positives_and_same_labels():
    """c[j, 0] may enter only row j's loss (its numerator), so d loss / d c[j, 0] is parallel to a_j."""
    a, c, valid = make_batch(10)
    labels = make_labels(10)
    loss = lambda a, c: call(classification_infonce, a, c, cand_valid=valid, labels=labels)  # noqa: E731
    g = np.asarray(jax.jit(jax.grad(loss, argnums=1))(a, c))[:, 0].astype(np.float64)
    cos = np.abs(np.sum(g * a, axis=1)) / (np.linalg.norm(g, axis=1) * np.linalg.norm(a, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    # One label everywhere: nothing is a negative, the denominator is the positive alone, loss log(1) = 0.
    same = np.zeros_like(labels)
    np.testing.assert_allclose(float(call(classification_infonce, a, c, cand_valid=valid, labels=same)), 0.0,
                               atol=1e-6)


def test_classification_needs_labels():
    a, c, valid = make_batch(11)
    with pytest.raises(ValueError, match=r"'classification' needs `labels`.*batch\.labels is None"):
        classification_infonce(a, c, Batch(cand_valid=valid), LossConfig())
