"""Host batch (numpy) -> global `jax.Array`s: the only data module that imports JAX.

Every host passes its own per-host batch; `jax.make_array_from_process_local_data` stitches them along the
batch axis into arrays whose leading dimension is process_count * per-host batch. Hosts pad to length buckets
independently, so with several processes they first agree on the longest anchor and candidate lengths, and for
packed batches on the row and segment-slot counts (their segment indices then point at global rows).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from qzhou_jax.batch_schema import FIELDS


def _length_groups(batch: Mapping[str, np.ndarray]) -> list[list[str]]:
    """Per side, the present fields padded on a trailing `length` axis (batch_schema.py FIELDS)."""
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


def agree_on_packing(batch: Mapping[str, np.ndarray], rows_sharding) -> dict[str, np.ndarray]:
    """Packed batches (data/packing.py) on several hosts: every host pads its rows to the most rows [R] and
    segment slots [S] any host has, and its flat segment indices (row * S + slot) are moved to its rows' place in
    the global array (`rows_sharding`: the sharding of `packed_ids`), so that anchors and candidates index the
    global packed rows. Padding rows are all padding (segment id 0), so they hold no text."""
    batch = dict(batch)
    if jax.process_count() == 1 or "packed_ids" not in batch:
        return batch
    from jax.experimental import multihost_utils

    rows, slots = batch["packed_segment_lengths"].shape
    most_rows, most_slots = (int(x) for x in multihost_utils.process_allgather(np.array([rows, slots])).max(0))
    width = batch["packed_ids"].shape[1]
    global_shape = (jax.process_count() * most_rows, width)
    held = {r for index in rows_sharding.addressable_devices_indices_map(global_shape).values()
            for r in range(*index[0].indices(global_shape[0]))}
    first_row = min(held)
    if held != set(range(first_row, first_row + most_rows)):
        raise ValueError("data.packing with several processes needs each host's devices to hold one contiguous "
                         f"block of the batch axis; process {jax.process_index()} holds rows {sorted(held)[:8]}...")
    pad_rows = most_rows - rows
    for key in ("packed_ids", "packed_segment_ids"):
        batch[key] = np.pad(batch[key], ((0, pad_rows), (0, 0)))
    batch["packed_segment_lengths"] = np.pad(batch["packed_segment_lengths"], ((0, pad_rows), (0, most_slots - slots)))
    for key in ("packed_anchor_index", "packed_cand_index"):
        index = np.asarray(batch[key])
        row, slot = np.divmod(index, slots)
        batch[key] = np.where(index >= 0, (first_row + row) * most_slots + slot, -1).astype(np.int32)
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
    if "packed_ids" in batch:
        batch = agree_on_packing(batch, sharding["packed_ids"] if isinstance(sharding, Mapping) else sharding)
    out = {}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"batch[{key!r}] is {type(value).__name__}, not a numpy array (tokenize the batch first)")
        s = sharding[key] if isinstance(sharding, Mapping) else sharding
        out[key] = jax.make_array_from_process_local_data(s, value)
    return out
