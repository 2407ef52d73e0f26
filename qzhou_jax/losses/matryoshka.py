"""The one Matryoshka wrapper: a task loss averaged over truncated, re-normalised embeddings (QZhou-Embedding-Zh)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import jax

from qzhou_jax.losses.config import LossConfig
from qzhou_jax.numerics import matryoshka_truncate

if TYPE_CHECKING:
    from qzhou_jax.batch import Batch

Array = jax.Array
LossFn = Callable[[Array, Array, "Batch", LossConfig], tuple[Array, dict[str, Array]]]


def matryoshka(loss_fn: LossFn, dims: Sequence[int] | None) -> LossFn:
    """loss_fn (the common signature `loss_fn(a, c, batch, config) -> (loss, metrics)`) averaged over `dims`.

    For each d in dims, a [B, E] and c [B, C, E] are truncated to their first d dimensions and re-normalised
    (numerics.matryoshka_truncate, the same truncation `encode --dim` applies at inference); the loss is the mean
    of the per-dim losses. Metrics: those of the largest dim, plus `loss@{d}` for every d. None or empty dims:
    loss_fn itself. A dim above the embedding dim is a config / model mismatch, named as such.
    """
    if not dims:
        return loss_fn
    dims = tuple(dims)

    def wrapped(a: Array, c: Array, batch: "Batch", config: LossConfig) -> tuple[Array, dict[str, Array]]:
        if max(dims) > a.shape[-1]:
            raise ValueError(f"Matryoshka dim {max(dims)} exceeds the embedding dim {a.shape[-1]} "
                             f"(loss.matryoshka_dims {dims})")
        results = [loss_fn(matryoshka_truncate(a, d), matryoshka_truncate(c, d), batch, config) for d in dims]
        loss = sum(r[0] for r in results) / len(dims)
        metrics = {**results[dims.index(max(dims))][1], **{f"loss@{d}": r[0] for d, r in zip(dims, results)}}
        return loss, metrics

    return wrapped
