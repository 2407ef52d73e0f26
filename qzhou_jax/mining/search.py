"""Exact cosine top-k of queries against a passage corpus sharded over every device of every host.

The passage embeddings [N, D] are split row-wise over a 1-D mesh of all devices (jax.devices(): every host's),
each host placing only its own devices' rows (read from the embedding cache). Queries come in fixed-size
batches, replicated. On each device a `lax.scan` walks its rows in chunks of `corpus_chunk` and keeps a running
top k with eval/search.py's `merge_chunk` (one kernel for evaluation and mining); the per-device top k are then
all-gathered and merged. Peak memory per device: its passage shard plus one [query_batch, corpus_chunk] score
block, never [queries, N]. Ties come out by ascending corpus index, as a stable sort of the full row would.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qzhou_jax import sharding
from qzhou_jax.eval.search import merge_chunk

AXIS = "passages"


def passage_mesh(devices=None) -> Mesh:
    """The project's mesh flattened to one axis: the corpus is split over all its devices."""
    return Mesh(sharding.make_mesh((-1, 1, 1), devices).devices.reshape(-1), (AXIS,))


class ShardedSearch:
    """`search(query_batch) -> (scores [B, k], indices [B, k])` over a corpus placed once on the mesh.

    `rows(start, stop)` supplies corpus rows [start, stop) as float32 (zeros past the end); it is only called for
    this host's devices. N is padded to devices x chunks x corpus_chunk; padded rows never score.
    """

    def __init__(self, rows: Callable[[int, int], np.ndarray], n: int, dim: int, k: int, *, query_batch: int = 256,
                 corpus_chunk: int = 8192, mesh: Mesh | None = None):
        if n < 1:
            raise ValueError("the corpus is empty")
        if not 1 <= k <= n:
            raise ValueError(f"top {k} asked of a corpus of {n} passages")
        self.mesh = mesh or passage_mesh()
        self.n, self.dim, self.k, self.query_batch = n, dim, k, query_batch
        devices = self.mesh.size
        per_device = -(-n // devices)
        self.chunk = min(corpus_chunk, per_device)
        self.chunks_per_device = -(-per_device // self.chunk)
        n_pad = devices * self.chunks_per_device * self.chunk
        corpus_sharding = NamedSharding(self.mesh, P(AXIS, None))
        self.corpus = jax.make_array_from_callback(
            (n_pad, dim), corpus_sharding, lambda index: rows(index[0].start or 0, index[0].stop or n_pad))
        self.query_sharding = NamedSharding(self.mesh, P())
        self._fn = _search_fn(self.mesh, k, self.chunk, self.chunks_per_device, n)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top k of up to `query_batch` queries (padded to that fixed shape, so one compilation)."""
        b = len(queries)
        if b > self.query_batch:
            raise ValueError(f"{b} queries in one batch; at most {self.query_batch}")
        padded = np.zeros((self.query_batch, self.dim), np.float32)
        padded[:b] = queries
        q = jax.make_array_from_callback(padded.shape, self.query_sharding, lambda index: padded[index])
        scores, indices = self._fn(q, self.corpus)
        # Replicated outputs: every host reads its own copy.
        return (np.asarray(scores.addressable_data(0))[:b],
                np.asarray(indices.addressable_data(0))[:b].astype(np.int64))


@functools.lru_cache(maxsize=8)
def _search_fn(mesh: Mesh, k: int, chunk: int, chunks_per_device: int, n: int):
    def local(queries, shard):  # queries [B, D] (all), shard [chunks_per_device * chunk, D] (this device's rows)
        base = jax.lax.axis_index(AXIS) * chunks_per_device * chunk
        blocks = shard.reshape(chunks_per_device, chunk, shard.shape[-1])

        def step(best, i):
            offset = base + i * chunk
            n_valid = jnp.clip(n - offset, 0, chunk)
            return merge_chunk(queries, blocks[i], n_valid, offset, *best, k=k), None

        b = queries.shape[0]
        init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.full((b, k), -1, jnp.int32))
        (scores, idx), _ = jax.lax.scan(step, init, jnp.arange(chunks_per_device))
        # Device order is corpus order, so the gathered candidates keep ascending indices among equal scores.
        all_scores = jax.lax.all_gather(scores, AXIS, axis=1, tiled=True)
        all_idx = jax.lax.all_gather(idx, AXIS, axis=1, tiled=True)
        top, pos = jax.lax.top_k(all_scores, k)
        return top, jnp.take_along_axis(all_idx, pos, axis=1)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS, None)), out_specs=(P(), P()),
                           check_vma=False)
    return jax.jit(mapped)
