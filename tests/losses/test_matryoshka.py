"""losses/matryoshka.py: the one Matryoshka wrapper, a loss of the common signature averaged over dims."""
import numpy as np
import pytest

from qzhou_jax.batch import Batch
from qzhou_jax.losses import LossConfig, cosent, matryoshka, retrieval_infonce
from tests.losses.references import E, TOL, _normalize, call, make_batch, ref_retrieval


def test_matryoshka_is_mean_over_truncated_renormalised_losses():
    a, c, valid = make_batch(14)
    dims = (4, 8, E)
    got = call(matryoshka(retrieval_infonce, dims), a, c, cand_valid=valid, config=LossConfig(tau=0.05))
    want = np.mean([ref_retrieval(_normalize(a[:, :d].astype(np.float64)), _normalize(c[..., :d].astype(np.float64)),
                                  valid, tau=0.05)[0] for d in dims])
    np.testing.assert_allclose(float(got), want, **TOL)
    assert matryoshka(cosent, None) is cosent
    assert matryoshka(cosent, ()) is cosent
    with pytest.raises(ValueError, match="exceeds the embedding dim"):
        call(matryoshka(retrieval_infonce, (E + 1,)), a, c, cand_valid=valid)


def test_matryoshka_metrics_come_from_the_largest_dim():
    a, c, valid = make_batch(15)
    batch, cfg = Batch(cand_valid=valid), LossConfig()
    loss, m = matryoshka(retrieval_infonce, (8, E, 4))(a, c, batch, cfg)
    full_loss, full = retrieval_infonce(a, c, batch, cfg)
    for name, value in full.items():
        np.testing.assert_allclose(float(m[name]), float(value), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(m[f"loss@{E}"]), float(full_loss), rtol=1e-6)
    np.testing.assert_allclose(float(loss), np.mean([float(m[f"loss@{d}"]) for d in (4, 8, E)]), rtol=1e-6)
    assert set(m) == set(full) | {"loss@4", "loss@8", f"loss@{E}"}
