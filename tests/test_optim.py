"""Gradient accumulation counts optimizer updates: warm-up and decay are sized in updates, and the logged
learning rate is the one the update applies."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from qzhou_jax import optim


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
