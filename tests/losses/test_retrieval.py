"""losses/retrieval.py: retrieval InfoNCE vs. the float64 loop reference (tests/losses/references.py)."""
import jax.numpy as jnp
import numpy as np
import pytest

from qzhou_jax.losses import LossConfig, retrieval_infonce
from tests.losses.references import B, C, TOL, call, make_batch, ref_retrieval

SWITCHES = ("hard_negatives", "in_batch_docs", "query_query", "doc_query", "doc_doc")
SWITCH_CASES = [
    dict(zip(SWITCHES, flags))
    for flags in [
        (True, True, True, False, False),  # the paper's default
        (False, False, False, False, False),  # positive only: loss 0
        (True, False, False, False, False),
        (False, True, False, False, False),
        (False, False, True, False, False),
        (True, True, True, True, False),
        (True, True, True, False, True),
        (True, True, True, True, True),
        (False, True, False, True, True),
    ]
]


@pytest.mark.parametrize("switches", SWITCH_CASES, ids=lambda s: "".join("1" if v else "0" for v in s.values()))
@pytest.mark.parametrize("tau", [0.02, 0.07])
def test_retrieval_matches_loop_reference(switches, tau):
    a, c, valid = make_batch(1)
    got = call(retrieval_infonce, a, c, cand_valid=valid, config=LossConfig(tau=tau, **switches))
    want, _ = ref_retrieval(a, c, valid, tau=tau, **switches)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, **TOL)


@pytest.mark.parametrize("margin", [0.1, 0.0, -0.05])
@pytest.mark.parametrize("all_terms", [False, True])
def test_retrieval_false_negative_margin(margin, all_terms):
    a, c, valid = make_batch(2)
    kw = dict(doc_query=all_terms, doc_doc=all_terms)
    got = call(retrieval_infonce, a, c, cand_valid=valid, config=LossConfig(false_negative_margin=margin, **kw))
    want, dropped = ref_retrieval(a, c, valid, false_negative_margin=margin, **kw)
    assert dropped > 0, "test data must make the margin drop something"
    np.testing.assert_allclose(float(got), want, **TOL)
    without = call(retrieval_infonce, a, c, cand_valid=valid, config=LossConfig(**kw))
    assert float(got) < float(without)  # dropping positive-scored terms shrinks the denominator


def test_retrieval_ignores_invalid_candidates_values():
    a, c, valid = make_batch(3)
    garbage = np.where(valid[..., None], c, 123.0).astype(np.float32)
    cfg = LossConfig(doc_doc=True)
    np.testing.assert_allclose(float(call(retrieval_infonce, a, garbage, cand_valid=valid, config=cfg)),
                               float(call(retrieval_infonce, a, c, cand_valid=valid, config=cfg)), rtol=1e-6)


def test_retrieval_all_valid_when_mask_is_none():
    a, c, _ = make_batch(4)
    want, _ = ref_retrieval(a, c, np.ones((B, C), bool))
    np.testing.assert_allclose(float(call(retrieval_infonce, a, c, cand_valid=None)), want, **TOL)


def test_retrieval_positive_is_always_valid():
    """A cand_valid that marks the positive False changes nothing: the numerator stays in the denominator."""
    a, c, valid = make_batch(5)
    unmarked = valid.copy()
    unmarked[::2, 0] = False
    np.testing.assert_allclose(float(call(retrieval_infonce, a, c, cand_valid=unmarked)),
                               float(call(retrieval_infonce, a, c, cand_valid=valid)), rtol=1e-6)


def test_switch_cases_cover_every_switch_both_ways():
    """Guards the parametrisation above: every switch is exercised on and off."""
    for name in SWITCHES:
        assert {case[name] for case in SWITCH_CASES} == {True, False}
