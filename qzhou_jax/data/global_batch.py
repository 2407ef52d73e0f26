"""Host batch (numpy) -> global `jax.Array`s: the only data module that imports JAX.

Every host passes its own per-host batch; `jax.make_array_from_process_local_data` stitches them along the
batch axis into arrays whose leading dimension is process_count * per-host batch. Hosts pad to length buckets
independently, so with several processes they first agree on the longest anchor and candidate lengths.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np


def _length_groups(batch: Mapping[str, np.ndarray]) -> list[list[str]]:
    """Per side, the present fields padded on a trailing `length` axis (qzhou_jax/batch.py FIELDS)."""
    from qzhou_jax.batch import FIELDS

    groups: dict[str, list[str]] = {}
    for name, field in FIELDS.items():
        if field.axes[-1] == "length" and name in batch:
            groups.setdefault(field.side, []).append(name)
    return list(groups.values())


def agree_on_lengths(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Right-pads every host's token arrays to the longest length any host has (one small all-gather)."""
    batch = dict(batch)
    groups = _length_groups(batch)
    if jax.process_count() == 1 or not groups:
        return batch
    from jax.experimental import multihost_utils

    lengths = np.array([batch[group[0]].shape[-1] for group in groups])
    longest = multihost_utils.process_allgather(lengths).max(0)
    for group, length in zip(groups, longest):
        for key in group:
            x = batch[key]
            batch[key] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, int(length) - x.shape[-1])])
    return batch


def to_global(batch: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """`sharding`: one `jax.sharding.Sharding` for every array (e.g. NamedSharding(mesh, P("data"))), or a
    mapping key -> sharding, in which case only its keys are converted. Non-array entries (text batches) are
    refused rather than silently dropped."""
    if isinstance(sharding, Mapping):
        missing = sorted(set(sharding) - set(batch))
        if missing:
            raise KeyError(f"batch lacks {missing}")
        batch = {k: batch[k] for k in sharding}
    batch = agree_on_lengths(batch)
    out = {}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"batch[{key!r}] is {type(value).__name__}, not a numpy array (tokenize the batch first)")
        s = sharding[key] if isinstance(sharding, Mapping) else sharding
        out[key] = jax.make_array_from_process_local_data(s, value)
    return out
