"""What every task loss shares: the similarity, the all-gather of its column side, InfoNCE over masked terms, the
masked spread metric, and reading the validity mask and the duplicate hashes off the batch.

Global batch. Every similarity is taken over the whole global batch (rows: this device's slice, columns: every
row of the batch), so calling a loss inside `jit` on batch-sharded arrays makes in-batch negatives cross devices
with no explicit collective.

Numerics. Inputs are cast to float32 first and the similarity matmuls run at HIGHEST precision (at tau = 0.02 a
similarity error of 1e-3 is already 0.05 in logit space, too much for TF32/bf16 passes). Entries that are not in
a denominator are replaced by a large negative *finite* logit through `jnp.where`, so they contribute exactly
exp(-1e9) = 0, never produce inf - inf = NaN, and receive exactly zero gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # the losses read a Batch's attributes only; no runtime import
    from qzhou_jax.batch import Batch

Array = jax.Array

# Logit given to entries outside a denominator: finite (no NaN in max-subtraction), exp() underflows to 0.
MASKED_LOGIT = -1e9
HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------- batch fields


def required(batch: "Batch", name: str, task: str, what: str) -> Array:
    """batch.<name>, or a ValueError naming the field when the batch lacks it."""
    value = getattr(batch, name)
    if value is None:
        raise ValueError(f"task {task!r} needs `{name}` ({what}); batch.{name} is None")
    return value


def candidate_valid(batch: "Batch", c: Array) -> Array:
    """batch.cand_valid as bool [B, C] (all True when None), the positive c[:, 0] always valid: it is the
    numerator by construction of the layout, so it must stay in the denominator."""
    if batch.cand_valid is None:
        return jnp.ones(c.shape[:2], dtype=bool)
    return jnp.asarray(batch.cand_valid, dtype=bool).at[:, 0].set(True)


def duplicate_hashes(batch: "Batch") -> tuple[Array, Array] | None:
    """(anchor_hash [B], cand_hash [B, C]) as int32 when the batch carries both (the duplicate masks are on), None
    when it carries neither (nothing is masked); one without the other is an error, not a silent no-op."""
    ah, ch = batch.anchor_hash, batch.cand_hash
    if (ah is None) != (ch is None):
        raise ValueError("the duplicate masks need both batch.anchor_hash and batch.cand_hash, or neither; got only "
                         + ("anchor_hash" if ch is None else "cand_hash"))
    if ah is None:
        return None
    return jnp.asarray(ah).astype(jnp.int32), jnp.asarray(ch).astype(jnp.int32)


# ------------------------------------------------------------------------------------------- similarities


def all_gathered(x: Array) -> Array:
    """x replicated on every device, for use as the column side of a global-batch similarity matrix.

    Under an Explicit-axes mesh (jax.make_mesh's default) a dot of two batch-sharded operands is a sharding type
    error, so the column operand is resharded explicitly; the row side stays sharded and so do the logits.
    Auto-mesh and unsharded arrays carry no spec and pass through (XLA inserts the all-gather itself).
    """
    sharding = jax.typeof(x).sharding
    if isinstance(sharding, jax.NamedSharding) and any(axis is not None for axis in sharding.spec):
        return jax.sharding.reshard(x, jax.NamedSharding(sharding.mesh, jax.P()))
    return x


def sim(x: Array, y: Array) -> Array:
    """Cosine similarity of already-normalised rows: x [N, E] . y [M, E] -> [N, M], float32."""
    return jnp.einsum("ne,me->nm", x, y, precision=HIGHEST, preferred_element_type=jnp.float32)


def row_sim(x: Array, y: Array) -> Array:
    """Row-wise cosine of already-normalised rows: x [B, E], y [B, E] -> [B], float32."""
    return jnp.einsum("be,be->b", x.astype(jnp.float32), y.astype(jnp.float32), precision=HIGHEST)


# ------------------------------------------------------------------------------------------ duplicate masks


def matches(rows: Array, cols: Array) -> Array:
    """rows [B, K] hashes of row i's own texts, cols [M] hashes of the columns -> [B, M]: the column's text is
    one of row i's texts."""
    return jnp.any(rows[:, :, None] == cols[None, None, :], axis=1)


def count_masked(blocks: Sequence[tuple[Array, Array]], dups: Sequence[Array | None]) -> Array:
    """How many kept terms of `blocks` the duplicate masks `dups` drop (the `masked_duplicates` metric)."""
    return sum(jnp.sum(keep & dup) for (_, keep), dup in zip(blocks, dups) if dup is not None).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ InfoNCE


def infonce(pos: Array, blocks: Sequence[tuple[Array, Array]], tau: float) -> tuple[Array, dict]:
    """-mean_i log(e^{pos_i/tau} / (e^{pos_i/tau} + sum of e^{s/tau} over unmasked negatives)).

    pos: [B] positive similarities. blocks: (similarities [B, K], keep-mask [B, K]) of negatives.
    Metrics: `accuracy` (top-1: the positive outscores every kept negative; ties count as correct),
    `num_negatives` (kept negatives per row, mean) and `sim_spread` (masked_std over every denominator term).
    """
    sims = jnp.concatenate([pos[:, None]] + [s for s, _ in blocks], axis=1)
    keep = jnp.concatenate([jnp.ones_like(pos, dtype=bool)[:, None]] + [m for _, m in blocks], axis=1)
    logits = jnp.where(keep, sims / tau, MASKED_LOGIT)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos / tau)
    accuracy = jnp.mean((jnp.argmax(logits, axis=1) == 0).astype(jnp.float32))
    return loss, {"accuracy": accuracy, "num_negatives": jnp.mean(jnp.sum(keep[:, 1:], axis=1).astype(jnp.float32)),
                  "sim_spread": masked_std(sims, keep)}


def masked_std(x: Array, keep: Array) -> Array:
    """Std of the kept entries: the spread of the cosines a loss ranks; near 0 means collapse (docs/learning.md)."""
    keep = keep.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(keep), 1.0)
    mean = jnp.sum(x * keep) / n
    return jax.lax.stop_gradient(jnp.sqrt(jnp.sum(keep * (x - mean) ** 2) / n))
