"""The contrastive losses of the QZhou-Embedding recipe (docs/recipe.md section 3): one loss per task type, all
called the same way, registered by task name.

    loss, metrics = losses.task_loss(a, c, batch, config)          # picks LOSSES[batch.task], Matryoshka included
    loss, metrics = losses.LOSSES["retrieval"](a, c, batch, config)  # one task's loss, full dim only

Every task loss has the signature `loss_fn(a, c, batch, config) -> (loss, metrics)`:
  a       [B, E]     anchor embeddings: the query / text_a / the text to classify
  c       [B, C, E]  candidate embeddings: c[:, 0] the positive (text_b for pair_score), c[:, 1:] negatives
  batch   qzhou_jax.batch.Batch: the loss reads its label fields, never its tokens --
            cand_valid [B, C]      False marks padding candidates (None: all valid); c[:, 0] is always valid
            score      [B]         pair_score gold scores (CoSENT)
            labels     [B, 1 + C]  classification labels: the anchor's, then each candidate's
            anchor_hash [B], cand_hash [B, C]  normalised-text hashes (optional, both or neither)
  config  LossConfig (hashable: a static jit argument)
  loss    float32 scalar; metrics {name: float32 scalar}
a and c are the embeddings of the GLOBAL batch, L2-normalised; any float dtype (the maths is float32). Shapes are
checked once, where host batches become `Batch`es (Batch.from_host), not again here; a field a loss needs and the
batch lacks (score for pair_score, labels for classification) is a ValueError naming it.

  task            loss (module.function)                   required batch field
  retrieval       retrieval.retrieval_infonce              none
  pair_score      pair_score.cosent                        score
  classification  classification.classification_infonce   labels
Each loss's docstring documents its inputs, what is in the numerator and what enters the denominator (CoSENT:
which pairs are ranked), and the metrics it returns.

Duplicate masks: with both `anchor_hash` and `cand_hash` on the batch (hashes of the normalised texts computed by
the data pipeline, data/transforms.text_hash), identical texts are never each other's negatives; each loss's
docstring says which of its terms that drops. Without hashes nothing changes. `masked_duplicates` counts the
terms so dropped in the batch.

Matryoshka (`matryoshka.matryoshka`, the one wrapper): with config.matryoshka_dims the loss is the mean over the
dims of the loss of truncated, re-normalised embeddings; task_loss applies it. core.py holds what the losses
share (similarity at HIGHEST precision, all-gather of the column side, masked InfoNCE; its docstring: numerics).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax

from qzhou_jax.losses.classification import classification_infonce
from qzhou_jax.losses.config import LossConfig, loss_config_from
from qzhou_jax.losses.matryoshka import LossFn, matryoshka
from qzhou_jax.losses.pair_score import cosent
from qzhou_jax.losses.retrieval import retrieval_infonce

if TYPE_CHECKING:
    from qzhou_jax.batch import Batch

__all__ = ["LOSSES", "TASKS", "LossConfig", "LossFn", "classification_infonce", "cosent", "loss_config_from",
           "matryoshka", "retrieval_infonce", "task_loss"]

# The registry: task type -> its loss, all with the signature loss_fn(a, c, batch, config) -> (loss, metrics).
LOSSES: dict[str, LossFn] = {
    "retrieval": retrieval_infonce,
    "pair_score": cosent,
    "classification": classification_infonce,
}
TASKS = tuple(LOSSES)


def task_loss(a: jax.Array, c: jax.Array, batch: "Batch",
              config: LossConfig = LossConfig()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of one batch, chosen by its task type (`batch.task`, static), and cheap metrics.

    LOSSES[batch.task] wrapped in `matryoshka(..., config.matryoshka_dims)` (itself when no dims): with dims the
    loss is the mean over them and the metrics come from the largest dim, plus one 'loss@{dim}' entry per dim.
    Returns (scalar float32 loss, {"loss": loss, the loss's own metrics...}). Under `jit`, pass config as a static
    argument; the task is pytree metadata of the batch, so each task type compiles once.
    """
    if batch.task not in LOSSES:
        what = "batch.task is None" if batch.task is None else f"unknown task {batch.task!r}"
        raise ValueError(f"{what}: a batch must carry its task type, one of {TASKS}")
    loss, metrics = matryoshka(LOSSES[batch.task], config.matryoshka_dims)(a, c, batch, config)
    return loss, {"loss": loss, **metrics}
