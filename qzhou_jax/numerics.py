"""The two numerical facts every embedding path shares: L2 normalisation and Matryoshka truncation.

One definition for the model (pooling), the losses and the encoder, so that training and inference normalise with
the same floor. JAX only: both the model and the losses import this module.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor on the squared norm. Real embeddings have norms far above 1e-6, where the floor never binds; an all-zero row
# (padding, an empty text) stays finite in value and gradient (the gradient is at most 1/sqrt(floor) = 1e6).
NORM_SQ_FLOOR = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
    """Float32 rows of unit L2 norm along the last axis."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), NORM_SQ_FLOOR))


def matryoshka_truncate(x: jax.Array, dim: int | None) -> jax.Array:
    """The first `dim` dimensions, re-normalised (None: all of them, normalised)."""
    if dim is not None:
        if not 0 < dim <= x.shape[-1]:
            raise ValueError(f"Matryoshka dim {dim} must be in 1..{x.shape[-1]} (the embedding dim)")
        x = x[..., :dim]
    return l2_normalize(x)
