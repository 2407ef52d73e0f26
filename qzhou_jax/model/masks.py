"""Segment ids and positions for the encoder.

Everything is expressed through segment ids: 0 marks padding, tokens with the same positive id belong to one text.
An unpacked batch is the special case `segment_ids = attention_mask`. A token attends to the tokens of its own
segment: all of them (`bidirectional`, the embedding default of docs/recipe.md section 1) or those at or before it (`causal`,
the stock LLM); attention.py turns segment ids into whatever mask form each kernel takes. Positions restart at 0 at
each segment's first token, so left and right padding give the same rotary positions and packed texts look exactly
as they would alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_ids_from_mask(attention_mask: jax.Array) -> jax.Array:
    return (attention_mask > 0).astype(jnp.int32)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Index of each token within its segment (0 for the segment's first token). [B, L] -> [B, L] int32."""
    length = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
    previous = jnp.pad(segment_ids[..., :-1], ((0, 0), (1, 0)), constant_values=-1)
    starts = jnp.where(segment_ids != previous, index, 0)
    first_of_segment = jax.lax.cummax(starts, axis=segment_ids.ndim - 1)
    return jnp.where(segment_ids > 0, index - first_of_segment, 0)
