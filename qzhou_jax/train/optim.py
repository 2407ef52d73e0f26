"""Optimizer: AdamW with linear warm-up then linear or cosine decay, gradient clipping, skipping of non-finite
updates, optional gradient accumulation. Optax throughout; this file wires the recipe's numbers in, and owns two
small transformations that keep the update one fused pass over the parameters (`clip_by_global_norm`,
`skip_nonfinite`; why is at each).

docs/recipe.md section 6: Adam, lr 3e-5 (stage 1) / 2e-5 (stage 2), 300 warm-up steps, weight decay 0.01 (unconfirmed).

With `grad_accum_steps = k` the schedule counts optimizer UPDATES (train.steps / k of them; warm-up in updates),
since MultiSteps advances the inner optimizer once per k micro-batches. Accumulation averages k micro-batches'
gradients, but each micro-batch's loss still sees only its own in-batch negatives (k times fewer than one big
batch); GradCache (train.gradcache_chunks) keeps the whole batch's negatives.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
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
    """Weight decay on matrices (kernels, embedding, LoRA's A and B), not on biases or norm scales (as Hugging Face's
    Trainer, which peft users train LoRA with, decays every weight but biases and norms)."""
    def keep(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name in ("kernel", "embedding", "lora_a", "lora_b")
    return jax.tree_util.tree_map_with_path(keep, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm's result, as one multiply: g * min(1, max_norm / ||g||) (equal when no clipping
    happens; within 1 ulp when it does). Optax's `select(norm < max, g, g / norm * max)` kept XLA:CPU from fusing
    the clip into Adam's elementwise loop, so the clipped gradient was written out in full: 190M parameters'
    update took 0.45 s with it and 0.19 s with this (benchmarks/train_step.py --breakdown; docs/planning.md)."""

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


class SkipNonFinite(NamedTuple):
    """An Optax transformation (init / update, usable wherever Optax takes one) plus `apply_gradients`, the same
    update applied to the parameters in one pass. See `skip_nonfinite`."""
    init: Callable[..., Any]
    update: Callable[..., Any]
    apply_gradients: Callable[..., Any]


def skip_nonfinite(inner: optax.GradientTransformation, max_consecutive_errors: int) -> SkipNonFinite:
    """optax.apply_if_finite with its state (optax.ApplyIfFiniteState, so checkpoints keep their layout) and its
    rules (a non-finite gradient leaves params and moments untouched and is counted; after more than
    `max_consecutive_errors` in a row the update is applied anyway), made cheaper in two ways:
    - finiteness is read off the global norm (one fused reduction, shared with clipping and the logged
      grad_norm) instead of an all(isfinite) reduction per leaf (0.13 s for 190M parameters on CPU). A finite
      gradient whose squared norm overflows float (norm > ~1.8e19) therefore counts as non-finite too;
    - `apply_gradients` puts the optimizer update *and* its application to the parameters in one `lax.cond`
      branch. apply_if_finite's cond returns the update tree, which must then be written out in full and read
      back by optax.apply_updates: a params-sized buffer and two passes more (0.61 s vs 0.21 s for 190M
      parameters with clipping and AdamW on CPU).
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return optax.ApplyIfFiniteState(notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
                                        total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

    def _bookkeeping(grads, state):
        finite = jnp.isfinite(optax.tree.norm(grads))
        consecutive = jnp.where(finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.notfinite_count))
        total = jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite))
        apply = jnp.logical_or(finite, consecutive > max_consecutive_errors)
        return apply, lambda inner_state: optax.ApplyIfFiniteState(consecutive, finite, total, inner_state)

    def update(grads, state, params=None, **extra_args):
        apply, new_state = _bookkeeping(grads, state)
        updates, inner_state = jax.lax.cond(
            apply, lambda: inner.update(grads, state.inner_state, params, **extra_args),
            lambda: (optax.tree.zeros_like(grads), state.inner_state))
        return updates, new_state(inner_state)

    def apply_gradients(grads, state, params):
        apply, new_state = _bookkeeping(grads, state)

        def step(params, inner_state):
            updates, inner_state = inner.update(grads, inner_state, params)
            return optax.apply_updates(params, updates), inner_state

        params, inner_state = jax.lax.cond(apply, step, lambda *unchanged: unchanged, params, state.inner_state)
        return params, new_state(inner_state)

    return SkipNonFinite(init, update, apply_gradients)


def apply_gradients(tx, grads, opt_state, params):
    """(new params, new optimizer state): `tx.apply_gradients` where the optimizer has it (one pass, see
    `skip_nonfinite`), else Optax's update followed by optax.apply_updates (e.g. MultiSteps accumulation)."""
    if isinstance(tx, SkipNonFinite):
        return tx.apply_gradients(grads, opt_state, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`cfg`: the config's `optim` block (lr, warmup_steps, decay, final_lr_ratio, b1, b2, eps, weight_decay,
    grad_clip, grad_accum_steps); `total_steps`: micro-batches (train.steps). The schedule is a function of the
    optimizer-update count (see `applied_learning_rate`). The optimizer sees only the trainable params
    (train_step.py, model.partition): frozen weights get no state, no update and no weight decay."""
    updates = max(total_steps // max(cfg.grad_accum_steps, 1), 1)
    schedule = learning_rate_schedule(cfg.lr, updates, cfg.warmup_steps, cfg.decay, cfg.final_lr_ratio)
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    tx = optax.chain(*parts)
    # A non-finite gradient leaves params and moments untouched and is counted in the state; the training loop
    # stops once `max_consecutive_nonfinite` happen in a row (Optax would otherwise apply it anyway).
    tx = skip_nonfinite(tx, max_consecutive_errors=2**30)
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
