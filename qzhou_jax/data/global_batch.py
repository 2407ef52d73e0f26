"""Host batch (numpy) -> global `jax.Array`s: the only data module that imports JAX.

Every host passes its own per-host batch; `jax.make_array_from_process_local_data` stitches them along the
batch axis into arrays whose leading dimension is process_count * per-host batch.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np


def to_global(batch: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """`sharding`: one `jax.sharding.Sharding` for every array (e.g. NamedSharding(mesh, P("data"))), or a
    mapping key -> sharding. Non-array entries (text batches) are refused rather than silently dropped."""
    out = {}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"batch[{key!r}] is {type(value).__name__}, not a numpy array (tokenize the batch first)")
        s = sharding[key] if isinstance(sharding, Mapping) else sharding
        out[key] = jax.make_array_from_process_local_data(s, value)
    return out
