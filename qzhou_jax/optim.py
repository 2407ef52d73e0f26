"""Optimizer: AdamW with linear warm-up then linear or cosine decay, gradient clipping, skipping of non-finite
updates, optional gradient accumulation. Everything is Optax; this file only wires the recipe's numbers in.

RECIPE section 6: Adam, lr 3e-5 (stage 1) / 2e-5 (stage 2), 300 warm-up steps, weight decay 0.01 (unconfirmed).

With `grad_accum_steps = k` the schedule counts optimizer UPDATES (train.steps / k of them; warm-up in updates),
since MultiSteps advances the inner optimizer once per k micro-batches. Accumulation averages k micro-batches'
gradients, but each micro-batch's loss still sees only its own in-batch negatives (k times fewer than one big
batch); GradCache (train.gradcache_chunks) keeps the whole batch's negatives.
"""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int, decay: str = "linear",
                           final_lr_ratio: float = 0.0) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if decay == "linear":
        after = optax.linear_schedule(lr, lr * final_lr_ratio, decay_steps)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_ratio)
    elif decay == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.decay must be 'linear', 'cosine' or 'constant', got {decay!r}")
    return optax.join_schedules([warmup, after], [warmup_steps])


def decay_mask(params):
    """Weight decay on matrices (kernels, embedding), not on biases or norm scales."""
    def keep(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`cfg`: the config's `optim` block (lr, warmup_steps, decay, final_lr_ratio, b1, b2, eps, weight_decay,
    grad_clip, grad_accum_steps); `total_steps`: micro-batches (train.steps). The schedule is a function of the
    optimizer-update count (see `applied_learning_rate`)."""
    updates = max(total_steps // max(cfg.grad_accum_steps, 1), 1)
    schedule = learning_rate_schedule(cfg.lr, updates, cfg.warmup_steps, cfg.decay, cfg.final_lr_ratio)
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    tx = optax.chain(*parts)
    # A non-finite gradient leaves params and moments untouched and is counted in the state; the training loop
    # stops once `max_consecutive_nonfinite` happen in a row (Optax would otherwise apply it anyway).
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx, schedule


def nonfinite_counts(opt_state) -> tuple[jax.Array, jax.Array]:
    """(consecutive, total) non-finite updates skipped so far, read from apply_if_finite's state."""
    state = opt_state.inner_opt_state if isinstance(opt_state, optax.MultiStepsState) else opt_state
    return state.notfinite_count, state.total_notfinite


def applied_learning_rate(schedule: optax.Schedule, opt_state) -> jax.Array:
    """The learning rate the next applied update uses: the schedule at Adam's own update count, which MultiSteps
    advances once per k micro-steps and a skipped non-finite update does not advance."""
    is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_schedule_state) if is_schedule_state(s)]
    return schedule(found[0].count)
