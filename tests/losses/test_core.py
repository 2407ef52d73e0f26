"""losses/core.py, through every loss: finite gradients, exactly zero gradient for what no denominator holds,
float32 maths from bf16 inputs, and the sim_spread metric (masked_std)."""
import jax
import jax.numpy as jnp
import numpy as np

from qzhou_jax.batch import Batch
from qzhou_jax.losses import LossConfig, classification_infonce, cosent, matryoshka, retrieval_infonce, task_loss
from tests.losses.references import B, C, E, TOL, _cos, _normalize, call, make_batch, make_labels


def _all_losses(valid, labels, score):
    """Every loss as a function of (a, c) alone, returning the loss."""
    full = LossConfig(doc_query=True, doc_doc=True)
    return {
        "retrieval": lambda a, c: call(retrieval_infonce, a, c, cand_valid=valid, config=full),
        "retrieval_margin": lambda a, c: call(retrieval_infonce, a, c, cand_valid=valid,
                                              config=LossConfig(false_negative_margin=0.1)),
        "classification": lambda a, c: call(classification_infonce, a, c, cand_valid=valid, labels=labels),
        "cosent": lambda a, c: call(cosent, a, c, score=score),
        "matryoshka": lambda a, c: call(matryoshka(classification_infonce, (4, 8)), a, c, cand_valid=valid,
                                        labels=labels),
    }


def test_gradients_finite_for_nearly_identical_embeddings():
    rng = np.random.default_rng(11)
    base = rng.normal(size=E)
    a = _normalize(base + 1e-4 * rng.normal(size=(B, E))).astype(np.float32)
    c = _normalize(base + 1e-4 * rng.normal(size=(B, C, E))).astype(np.float32)
    _, _, valid = make_batch(11)
    for name, fn in _all_losses(valid, make_labels(11), jnp.arange(B, dtype=jnp.float32)).items():
        loss, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(a, c)
        assert np.isfinite(float(loss)), name
        assert all(np.all(np.isfinite(g)) for g in grads), name


def test_invalid_candidates_get_exactly_zero_gradient():
    a, c, valid = make_batch(12)
    c = np.where(valid[..., None], c, 0.0).astype(np.float32)  # zero-vector padding, as a collator may emit
    assert not valid.all()
    for name, fn in _all_losses(valid, make_labels(12), jnp.arange(B, dtype=jnp.float32)).items():
        if name == "cosent":
            continue
        g = jax.jit(jax.grad(fn, argnums=1))(a, c)
        assert np.all(np.asarray(g)[~valid] == 0.0), name
        assert np.any(np.asarray(g)[valid] != 0.0), name
    # Matryoshka re-normalises: zero padding rows must stay finite with zero gradient there too.
    wrapped = matryoshka(retrieval_infonce, (4, 8, E))
    full = LossConfig(doc_query=True, doc_doc=True)
    fn = jax.value_and_grad(lambda a, c: call(wrapped, a, c, cand_valid=valid, config=full), argnums=1)
    loss, g = jax.jit(fn)(a, c)
    assert np.isfinite(float(loss)) and np.all(np.asarray(g)[~valid] == 0.0)


def test_bf16_inputs_give_float32_loss():
    a, c, valid = make_batch(13)
    labels = make_labels(13)
    score = jnp.asarray(np.random.default_rng(13).uniform(0, 5, B), jnp.float32)
    a16, c16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(c, jnp.bfloat16)
    for name, fn in _all_losses(valid, labels, score).items():
        got = fn(a16, c16)
        assert got.dtype == jnp.float32, name
        # Math in float32: equals the fp32 loss of the bf16-rounded inputs, and is close to the unrounded one.
        np.testing.assert_allclose(float(got), float(fn(a16.astype(jnp.float32), c16.astype(jnp.float32))),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(float(got), float(fn(a, c)), rtol=0.05, atol=0.05)


def test_sim_spread_is_std_of_the_cosines_each_loss_ranks():
    """sim_spread (docs/learning.md): CoSENT, the std of the pair cosines; InfoNCE, the std over every similarity
    in a denominator (positives and kept negatives), by a loop over the paper-default retrieval terms."""
    a, c, valid = make_batch(21)
    score = np.random.default_rng(21).integers(0, 3, B).astype(np.float32)
    _, m = task_loss(a, c[:, :1], Batch(score=score, task="pair_score"))
    np.testing.assert_allclose(float(m["sim_spread"]), np.std([_cos(a[i], c[i, 0]) for i in range(B)]), **TOL)

    _, m = task_loss(a, c, Batch(cand_valid=valid, task="retrieval"))
    sims = []
    for i in range(B):
        sims.append(_cos(a[i], c[i, 0]))
        sims += [_cos(a[i], c[j, k]) for j in range(B) for k in range(C) if valid[j, k] and (j, k) != (i, 0)]
        sims += [_cos(a[i], a[j]) for j in range(B) if j != i]
    np.testing.assert_allclose(float(m["sim_spread"]), np.std(sims), **TOL)
    # all embeddings equal (collapse): no spread
    same = np.broadcast_to(a[:1], a.shape)
    _, m = task_loss(same, np.broadcast_to(a[:1, None], (B, 1, E)), Batch(score=score, task="pair_score"))
    assert float(m["sim_spread"]) < 1e-6
