"""From final hidden states to embeddings: mean or last-token pooling, L2 norm, Matryoshka truncation.

QZhou-Embedding averages the final hidden states over every non-pad token (instruction tokens included) and
L2-normalises (docs/recipe.md section 1). Pooling runs in float32 whatever the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from qzhou_jax.numerics import l2_normalize, matryoshka_truncate  # noqa: F401 (l2_normalize: re-exported)
from qzhou_jax.constraints import replicated


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, L, D], [B, L] -> [B, D]: mean over tokens whose mask is non-zero."""
    weights = (attention_mask > 0).astype(jnp.float32)
    summed = jnp.einsum("bld,bl->bd", hidden.astype(jnp.float32), weights)
    return summed / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)


def last_token_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, D]: hidden state of the last non-pad token (works for left and right padding)."""
    length = attention_mask.shape[-1]
    index = jnp.where(attention_mask > 0, jnp.arange(length), -1).max(-1)
    index = jnp.maximum(index, 0)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def segment_mean_pool(hidden: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Packed rows: [B, L, D] with segment ids 1..S (0 = pad) -> [B, S, D], one mean per segment."""
    one_hot = (segment_ids[..., None] == jnp.arange(1, num_segments + 1)).astype(jnp.float32)  # [B, L, S]
    summed = jnp.einsum("bld,bls->bsd", hidden.astype(jnp.float32), one_hot)
    return summed / jnp.maximum(one_hot.sum(1)[..., None], 1.0)


def segment_last_token_pool(hidden: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Packed rows: [B, L, D] -> [B, S, D], the last token of each segment."""
    length = segment_ids.shape[-1]
    hits = segment_ids[..., None] == jnp.arange(1, num_segments + 1)  # [B, L, S]
    index = jnp.maximum(jnp.where(hits, jnp.arange(length)[None, :, None], -1).max(1), 0)  # [B, S]
    return jnp.take_along_axis(hidden, index[..., None], axis=1).astype(jnp.float32)


def embed_segments(hidden: jax.Array, segment_ids: jax.Array, num_segments: int, index: jax.Array,
                   mode: str = "mean", dim: int | None = None) -> jax.Array:
    """Packed rows -> embeddings of the texts `index` points at, as `embed` gives for each text alone.

    hidden [R, T, D], segment ids [R, T] (1..num_segments per row), index int [...] into the flat [R * S] segments
    (row * S + segment - 1; -1 for an empty text, whose embedding is 0 as the padded path's). -> [..., D].
    """
    pooler = {"mean": segment_mean_pool, "last": segment_last_token_pool}.get(mode)
    if pooler is None:
        raise ValueError(f"unknown pooling mode {mode!r}")
    pooled = pooler(hidden, segment_ids, num_segments)
    pooled = pooled.reshape(-1, pooled.shape[-1])
    if dim is not None:
        pooled = pooled[..., :dim]
    picked = jnp.take(replicated(pooled), jnp.maximum(index, 0), axis=0)
    return l2_normalize(jnp.where((index >= 0)[..., None], picked, 0.0))


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str = "mean") -> jax.Array:
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "last":
        return last_token_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling mode {mode!r}")


def embed(hidden: jax.Array, attention_mask: jax.Array, mode: str = "mean", dim: int | None = None) -> jax.Array:
    """Pooled, optionally Matryoshka-truncated to `dim`, L2-normalised float32 embeddings."""
    return matryoshka_truncate(pool(hidden, attention_mask, mode), dim)
