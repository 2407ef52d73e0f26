"""A fingerprint of a training state, saved in each checkpoint's metadata and verified on restore.

Per leaf, two uint32 sums over the array's raw bits: a plain sum and a position-weighted one. Integer addition
modulo 2**32 is exact and order-free, so the fingerprint is the same however the array is sharded (a resume on
another mesh or host count verifies too), and any changed byte changes it (a flipped bit changes the plain sum;
swapped values change the weighted one). It runs as one jitted reduction on the devices, no host gather.
Norms would not do: a flipped low mantissa bit moves a norm by less than float rounding does.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant: spreads positions over 32 bits


def _bits(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    raise TypeError(f"fingerprint: unsupported dtype {x.dtype}")


def _leaf(x: jax.Array) -> jax.Array:
    bits = _bits(jnp.asarray(x))
    position = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):  # row-major linear index, wrapping in uint32
        position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= bits.shape[axis]
    weights = position * _GOLDEN + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


@jax.jit
def _fingerprint_tree(tree):
    return jax.tree.map(_leaf, tree)


def fingerprint(tree: Any) -> dict[str, list[int]]:
    """{leaf path: [sum, weighted sum]} of a pytree of arrays (global arrays: every process must call it)."""
    sums = _fingerprint_tree(tree)
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(jax.device_get(value))] for path, value in flat}


def shapes(tree: Any) -> dict[str, str]:
    """{leaf path: "shape dtype"}: the structure a checkpoint can be restored into."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): f"{tuple(v.shape)} {jnp.dtype(v.dtype).name}" for p, v in flat}


def mismatches(saved: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    """Leaf paths whose fingerprint differs (or that only one side has)."""
    return sorted(k for k in set(saved) | set(current) if list(saved.get(k, ())) != list(current.get(k, ())))
