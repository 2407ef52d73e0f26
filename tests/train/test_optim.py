"""Gradient accumulation counts optimizer updates: warm-up and decay are sized in updates, and the logged
learning rate is the one the update applies."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from qzhou_jax.train import optim


def test_accumulated_schedule_is_sized_in_updates_and_logged_lr_is_applied():
    k, micro_steps, lr = 2, 8, 0.1
    cfg = ml_collections.ConfigDict(dict(lr=lr, warmup_steps=2, decay="linear", final_lr_ratio=0.0, b1=0.9,
                                         b2=0.999, eps=1e-12, weight_decay=0.0, grad_clip=0.0, grad_accum_steps=k))
    tx, schedule = optim.make_optimizer(cfg, micro_steps)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    logged, applied = [], []
    for _ in range(micro_steps):
        logged.append(float(optim.applied_learning_rate(schedule, state)))
        updates, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)  # constant gradient: Adam steps by lr
        new = optax.apply_updates(params, updates)
        applied.append(float(params["w"][0] - new["w"][0]))
        params = new
    # 4 updates: warm-up 0, lr/2 over 2 updates, then linear decay to 0 over the remaining 2.
    per_update = [0.0, lr / 2, lr, lr / 2]
    np.testing.assert_allclose(logged, np.repeat(per_update, k), rtol=1e-6)
    np.testing.assert_allclose(applied, [0, per_update[0], 0, per_update[1], 0, per_update[2], 0, per_update[3]],
                               rtol=1e-4, atol=1e-9)


def _cfg(**kw):
    base = dict(lr=0.05, warmup_steps=0, decay="constant", final_lr_ratio=1.0, b1=0.9, b2=0.999, eps=1e-8,
                weight_decay=0.01, grad_clip=1.0, grad_accum_steps=1)
    return ml_collections.ConfigDict({**base, **kw})


def _gradient_sequence():
    """Small, clipped (norm >> 1), NaN, inf, then finite again: every branch of clipping and skipping."""
    rng = np.random.default_rng(0)
    shapes = {"kernel": (5, 3), "embedding": (7, 3), "scale": (3,)}
    seq = []
    for factor in (0.01, 10.0, np.nan, np.inf, 0.3, 50.0):
        g = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
        if not np.isfinite(factor):
            g["kernel"] = g["kernel"].at[1, 2].set(factor)
            factor = 1.0
        seq.append(jax.tree.map(lambda x: x * factor, g))
    params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    return params, seq


def test_fused_update_equals_optax_apply_if_finite_clip_and_adamw_through_clipping_and_skipped_steps():
    """The reference is Optax's own apply_if_finite(chain(clip_by_global_norm, adamw)); ours must give the same
    params, moments and skip counters, through its one-pass `apply_gradients` and through `update`."""
    cfg = _cfg()
    tx, schedule = optim.make_optimizer(cfg, 10)
    reference = optax.apply_if_finite(optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    mask=optim.decay_mask)), max_consecutive_errors=2**30)
    params, grads = _gradient_sequence()
    fused_step = jax.jit(lambda g, s, p: optim.apply_gradients(tx, g, s, p))
    update_step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    ref_step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*reference.update(g, s, p)))
    runs = {name: [params, t.init(params)] for name, t in (("fused", tx), ("update", tx), ("reference", reference))}
    steps = {"fused": fused_step, "update": update_step, "reference": ref_step}
    for i, g in enumerate(grads):
        for name, run in runs.items():
            run[0], run[1] = steps[name](g, run[1], run[0])
        ref_params, ref_state = runs["reference"]
        for name in ("fused", "update"):
            got_params, got_state = runs[name]
            for k in params:
                np.testing.assert_allclose(got_params[k], ref_params[k], rtol=2e-6, atol=1e-7, err_msg=f"{name} {i} {k}")
            np.testing.assert_allclose(got_state.inner_state[1][0].mu["kernel"], ref_state.inner_state[1][0].mu["kernel"],
                                       rtol=2e-6, atol=1e-8)
            assert [int(x) for x in optim.nonfinite_counts(got_state)] == [int(x) for x in
                                                                           optim.nonfinite_counts(ref_state)], (name, i)
            assert jax.tree.structure(got_state) == jax.tree.structure(ref_state)  # checkpoints keep their layout
    assert [int(x) for x in optim.nonfinite_counts(runs["fused"][1])] == [0, 2]
    assert not np.array_equal(runs["fused"][0]["kernel"], params["kernel"])  # the finite steps did move it


def test_skipped_updates_leave_everything_untouched_and_the_limit_gives_up_as_optax_does():
    inner = optax.adam(0.1)
    ours, theirs = optim.skip_nonfinite(inner, max_consecutive_errors=2), optax.apply_if_finite(inner, 2)
    params = {"w": jnp.arange(3.0)}
    bad = {"w": jnp.array([1.0, jnp.nan, 1.0])}
    a, sa = params, ours.init(params)
    b, sb = params, theirs.init(params)
    for i in range(4):  # skipped, skipped, then (3 > 2 in a row) applied: NaN params, as Optax does
        a, sa = optim.apply_gradients(ours, bad, sa, a)
        u, sb = theirs.update(bad, sb, b)
        b = optax.apply_updates(b, u)
        np.testing.assert_array_equal(a["w"], b["w"])
        assert int(sa.notfinite_count) == int(sb.notfinite_count) == i + 1
        if i < 2:
            np.testing.assert_array_equal(a["w"], params["w"])
            assert int(sa.inner_state[0].count) == 0  # Adam's moments and count untouched
    assert np.isnan(np.asarray(a["w"])[1])


def test_a_gradient_whose_norm_overflows_is_skipped_like_a_non_finite_one():
    """The documented edge of reading finiteness off the global norm: finite entries, overflowing squares."""
    tx, _ = optim.make_optimizer(_cfg(), 10)
    params = {"kernel": jnp.ones((2, 2))}
    huge = {"kernel": jnp.full((2, 2), 1e30)}
    new, state = optim.apply_gradients(tx, huge, tx.init(params), params)
    np.testing.assert_array_equal(new["kernel"], params["kernel"])
    assert [int(x) for x in optim.nonfinite_counts(state)] == [1, 1]


def test_clip_by_global_norm_is_optax_s_clip():
    rng = np.random.default_rng(1)
    for scale in (0.01, 1.0, 30.0):
        g = {"a": jnp.asarray(rng.standard_normal((4, 5)) * scale, jnp.float32), "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}
        ours = optim.clip_by_global_norm(1.0).update(g, None)[0]
        theirs = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())[0]
        for k in g:
            np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6)
        assert float(optax.tree.norm(ours)) <= 1.0 + 1e-6
