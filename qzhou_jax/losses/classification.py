"""Example-based classification InfoNCE with a label mask (docs/recipe.md section 3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from qzhou_jax.losses.config import LossConfig
from qzhou_jax.losses.core import (all_gathered, candidate_valid, count_masked, duplicate_hashes, infonce, matches,
                                   required, row_sim, sim)

if TYPE_CHECKING:
    from qzhou_jax.batch import Batch

Array = jax.Array


def classification_infonce(a: Array, c: Array, batch: "Batch", config: LossConfig) -> tuple[Array, dict[str, Array]]:
    """Classification InfoNCE: each text against its positive (a text of its label) and texts of other labels.

    Inputs: a [B, E] the texts to classify; c [B, C, E], c[:, 0] a positive (same label), c[:, 1:] negatives;
    both L2-normalised (any float dtype; the maths is float32).
    Batch fields: `labels` [B, 1 + C] (required; a ValueError names it when absent): the anchor's label id, then
    each candidate's; `cand_valid` [B, C] (None: every candidate valid; the positive is always valid); optional
    `anchor_hash` [B] + `cand_hash` [B, C] (duplicate masks, below).
    Config: tau (temperature).

    Numerator: e^{s(a_i, c_i0)/tau}. Denominator: the numerator's term + its own negatives c[i, 1:] + the other
    anchors a_j (j != i) + their negatives c[j, 1:], less every item that shares anchor i's label (not a
    negative) and every invalid candidate. Other samples' positives c[j, 0] never enter (by design, TR).
    Duplicate masks (with both hashes): other anchors and negatives whose text is identical to anchor i or its
    positive are dropped (a mislabelled copy is not a negative).

    Loss: the mean over anchors of -log(numerator / denominator), float32 scalar.
    Metrics: accuracy (top-1), num_negatives (kept per anchor, mean), sim_spread (std over every denominator
    similarity), masked_duplicates (with hashes: the terms the masks dropped).
    """
    labels = jnp.asarray(required(batch, "labels", "classification",
                                  "label ids [B, 1 + C]: the anchor's, then each candidate's"))
    cand_valid = candidate_valid(batch, c)
    hashes = duplicate_hashes(batch)
    b, n_cand, _ = c.shape
    x = a.astype(jnp.float32)
    c = c.astype(jnp.float32)
    anchor_label = labels[:, 0]
    pos = row_sim(x, c[:, 0])

    other = ~jnp.eye(b, dtype=bool)
    blocks = [(sim(x, all_gathered(x)), other & (anchor_label[:, None] != all_gathered(anchor_label)[None, :]))]
    if n_cand > 1:
        # Negatives of every sample, own ones included; other samples' positives stay out by design.
        negs = all_gathered(c[:, 1:]).reshape(b * (n_cand - 1), -1)
        neg_valid = all_gathered(cand_valid[:, 1:]).reshape(-1)
        neg_label = all_gathered(labels[:, 2:]).reshape(-1)
        blocks.append((sim(x, negs), neg_valid[None, :] & (anchor_label[:, None] != neg_label[None, :])))
    if hashes is None:
        return infonce(pos, blocks, config.tau)
    ah, ch = hashes
    rows = jnp.stack([ah, ch[:, 0]], axis=1)  # text i, its positive
    cols = [all_gathered(ah), all_gathered(ch[:, 1:]).reshape(-1)]
    dups = [matches(rows, h) for h in cols[: len(blocks)]]
    masked = count_masked(blocks, dups)
    loss, metrics = infonce(pos, [(s, keep & ~dup) for (s, keep), dup in zip(blocks, dups)], config.tau)
    return loss, {**metrics, "masked_duplicates": masked}
