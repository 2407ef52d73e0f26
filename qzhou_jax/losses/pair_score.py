"""CoSENT, the pair-score loss (NLI / STS; docs/recipe.md section 3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from qzhou_jax.losses.config import LossConfig
from qzhou_jax.losses.core import MASKED_LOGIT, all_gathered, duplicate_hashes, required, row_sim

if TYPE_CHECKING:
    from qzhou_jax.batch import Batch

Array = jax.Array


def cosent(a: Array, c: Array, batch: "Batch", config: LossConfig) -> tuple[Array, dict[str, Array]]:
    """CoSENT: rank the pairs' cosines in the order of their gold scores, over every two pairs of the global batch.

    Inputs: a [B, E] text_a; c [B, C, E] whose c[:, 0] is text_b (pair-score batches have C = 1; c[:, 1:], if
    any, is not read); both L2-normalised (any float dtype; the maths is float32).
    Batch fields: `score` [B] gold scores (required: any real scale, only their order matters; a ValueError names
    it when absent); optional `anchor_hash` [B] + `cand_hash` [B, C] (duplicate masks, below). cand_valid and
    labels are not read.
    Config: cosent_tau (temperature).

    With s_i = cos(a_i, b_i): loss = log(1 + sum over pairs (i, k) with gold_i > gold_k of e^{(s_k - s_i)/tau}).
    A ranking loss, no numerator / denominator split: every ordered pair (i gold-ranked above k) is one term of
    the sum, pairs of equal gold never enter, and a batch with no ordered pair has loss log(1) = 0 exactly.
    Duplicate masks (with both hashes): the terms between two pairs holding the same two texts (either order) are
    dropped; a pair is not ranked against its own copy.

    Loss: float32 scalar. Metrics: pair_accuracy (fraction of ordered pairs whose cosines agree with the gold
    order), num_ordered_pairs (terms in the sum), sim_spread (std of the pair cosines s_i), masked_duplicates
    (with hashes: the ordered pairs the masks dropped).
    """
    score = required(batch, "score", "pair_score", "gold scores [B]")
    hashes = duplicate_hashes(batch)
    s = row_sim(a, c[:, 0])
    gold = jnp.asarray(score).astype(jnp.float32)
    s_cols, gold_cols = all_gathered(s), all_gathered(gold)
    # Row i, column k: pair i is gold-ranked above pair k, penalise e^{(s_k - s_i)/tau}.
    above = gold[:, None] > gold_cols[None, :]
    masked = None
    if hashes is not None:  # the same two texts (either order) in both pairs
        ha, hb = hashes[0], hashes[1][:, 0]
        key = jnp.stack([jnp.minimum(ha, hb), jnp.maximum(ha, hb)], axis=1)
        key_cols = all_gathered(key)
        same = jnp.all(key[:, None, :] == key_cols[None, :, :], axis=-1)
        masked = jnp.sum(above & same).astype(jnp.float32)
        above = above & ~same
    diffs = jnp.where(above, (s_cols[None, :] - s[:, None]) / config.cosent_tau, MASKED_LOGIT)
    # log(1 + sum e^diffs) = logsumexp over [0, diffs]; with no ordered pair, logaddexp(0, ~-1e9) = 0 exactly.
    loss = jnp.logaddexp(0.0, jax.nn.logsumexp(diffs))
    # Fraction of ordered pairs whose similarities agree with the gold order (a cheap ranking metric).
    n_above = jnp.sum(above)
    concordant = jnp.sum(above & (s[:, None] > s_cols[None, :])) / jnp.maximum(n_above, 1)
    metrics = {"pair_accuracy": concordant.astype(jnp.float32), "num_ordered_pairs": n_above.astype(jnp.float32),
               "sim_spread": jax.lax.stop_gradient(jnp.std(s))}
    if masked is not None:
        metrics["masked_duplicates"] = masked
    return loss, metrics
