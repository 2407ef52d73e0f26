"""Grouped sampling (docs/recipe.md section 5): every global step draws ONE dataset, then that dataset's next batch.

Per dataset, a Grain `MapDataset` over sample positions:
    range(n) -> shuffle(seed_i) (reshuffled every epoch) -> repeat() -> random_map(example_fn, seed_i)
             -> slice(process_index::process_count) -> batch(per-host batch, drop_remainder, batch_fn)
The random map runs before the host slice so its per-element RNG depends on the global position only. Host h
takes positions h, h+P, h+2P, ...; batch j of every host thus comes from the same global window of
P * per_host_batch positions, so the hosts' slices are disjoint and together cover every sample of an epoch.

`step_mixture` is Grain's `MapDataset.select_from_datasets` with a `StepSelection` map over global steps: step ->
dataset d drawn from p by a counter-seeded RNG (a pure function of (seed, step), identical on every host) ->
element k of stream d, where k counts the earlier steps that chose d. Being a MapDataset, its iterator
checkpoints as {"next_index": step} with Grain's own `get_state()` / `set_state()`, and a restored pipeline
replays exactly the same batches. (Grain's `mix(proportions)` interleaves in fixed proportions, not by a random
weighted draw, hence the selection map.)

Clean batches: an epoch holds floor(n / global_batch) whole global batches (`slice` before `repeat`: the
remainder of each epoch's shuffle is dropped, a different one every epoch), so a global batch never straddles
two epochs and never holds a sample twice.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data.formats import RETRIEVAL, check_task

_CHUNK = 1024  # steps drawn per RNG call; chunk c uses default_rng([seed, _SALT, c])
_SALT = 0x51A7


def sampling_probabilities(sizes: Sequence[int], tasks: Sequence[str], alpha: float, eta: float | None = None,
                           weights: Sequence[float] | None = None) -> np.ndarray:
    """p_i = w_i n_i^alpha / sum_j w_j n_j^alpha; with `eta`, retrieval datasets share eta and the rest 1 - eta,
    each group split by w_i n_i^alpha (stage 2). `weights` (default 1) scale a dataset's mass inside its group."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) == 0:
        raise ValueError("need at least one dataset")
    if len(tasks) != len(sizes):
        raise ValueError(f"{len(sizes)} sizes but {len(tasks)} task types")
    if np.any(sizes <= 0):
        raise UsageError(f"every dataset needs at least one sample, sizes {sizes.astype(int).tolist()}")
    weights = np.ones_like(sizes) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != sizes.shape or np.any(weights <= 0):
        raise UsageError(f"weights must be positive, one per dataset; got {weights.tolist()}")
    for task in tasks:
        check_task(task)
    mass = weights * sizes ** float(alpha)
    if eta is None:
        return mass / mass.sum()
    if not 0.0 < eta < 1.0:
        raise UsageError(f"eta must lie in (0, 1), got {eta}")
    is_retrieval = np.array([t == RETRIEVAL for t in tasks])
    if is_retrieval.all() or not is_retrieval.any():
        raise UsageError("eta splits retrieval vs other datasets; the mixture must contain both "
                         "(set eta=None for a single-group mixture)")
    return np.where(is_retrieval, eta * mass / mass[is_retrieval].sum(),
                    (1.0 - eta) * mass / mass[~is_retrieval].sum())


def host_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise UsageError(f"global batch size {global_batch_size} is not divisible by {process_count} hosts")
    return global_batch_size // process_count


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for (seed, keys...), as Grain's shuffle needs."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def dataset_stream(num_samples: int, example_fn: Callable[[int, np.random.Generator], Any], *, seed: int,
                   host_batch: int, process_index: int, process_count: int,
                   batch_fn: Callable[[Sequence[Any]], Any] | None = None) -> grain.MapDataset:
    """Infinite stream of per-host batches of one dataset (see the module docstring for the stages)."""
    if num_samples < 1:
        raise ValueError("a dataset stream needs at least one sample")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    global_batch = host_batch * process_count
    if num_samples < global_batch:
        raise UsageError(f"a dataset of {num_samples} samples cannot fill one global batch of {global_batch} "
                         f"without repeating samples: lower the task's batch_size or add data")
    per_epoch = num_samples // global_batch * global_batch
    ds = grain.MapDataset.range(num_samples).shuffle(seed=seed).slice(slice(0, per_epoch)).repeat()
    ds = ds.random_map(example_fn, seed=seed)
    ds = ds.slice(slice(process_index, None, process_count))
    return ds.batch(host_batch, drop_remainder=True, batch_fn=batch_fn)


class StepSelection(grain.transforms.DatasetSelectionMap):
    """Grain selection map: global step -> (dataset drawn for the step, that dataset's next batch). Infinite.

    A pure function of (seed, step): the draw of chunk c (of _CHUNK steps) comes from default_rng([seed, _SALT,
    c]); the index within a dataset counts the earlier steps that chose it (cumulative counts per chunk).
    """

    def __init__(self, probabilities: Sequence[float], seed: int):
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"need one probability per stream summing to 1, got {p.tolist()}")
        self._cdf = np.cumsum(p)
        self._cdf[-1] = 1.0
        self._seed = int(seed)
        self._init_cache()

    def _init_cache(self):
        self._lock = threading.Lock()
        self._offsets = [np.zeros(len(self._cdf), dtype=np.int64)]  # per-dataset counts before chunk c
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self):  # picklable for Grain worker processes: drop the lock and caches
        state = self.__dict__.copy()
        for key in ("_lock", "_offsets", "_chunks"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    @property
    def num_datasets(self) -> int:
        return len(self._cdf)

    def _draw(self, chunk: int) -> np.ndarray:
        u = np.random.default_rng([self._seed, _SALT, chunk]).random(_CHUNK)
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1)

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset per step, index within that dataset's stream) for the steps of one chunk."""
        with self._lock:
            if chunk in self._chunks:
                return self._chunks[chunk]
            while len(self._offsets) <= chunk:
                c = len(self._offsets) - 1
                counts = np.bincount(self._draw(c), minlength=len(self._cdf))
                self._offsets.append(self._offsets[c] + counts)
            choice = self._draw(chunk)
            within = np.empty(_CHUNK, dtype=np.int64)
            for d in range(len(self._cdf)):
                hits = choice == d
                within[hits] = self._offsets[chunk][d] + np.arange(hits.sum())
            if len(self._chunks) >= 8:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[chunk] = (choice, within)
            return choice, within

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step: int) -> tuple[int, int]:
        if step < 0:
            raise IndexError(f"negative step {step}")
        choice, within = self._chunk(step // _CHUNK)
        return int(choice[step % _CHUNK]), int(within[step % _CHUNK])

    def __repr__(self) -> str:
        return f"StepSelection({len(self._cdf)} datasets, seed={self._seed})"


def step_mixture(streams: Sequence[grain.MapDataset], probabilities: Sequence[float], seed: int) -> grain.MapDataset:
    """Grain's `select_from_datasets` over the per-dataset batch streams with a `StepSelection` map."""
    selection = StepSelection(probabilities, seed)
    if selection.num_datasets != len(streams):
        raise ValueError(f"need one probability per stream summing to 1, got {len(streams)} streams and "
                         f"{selection.num_datasets} probabilities")
    return grain.MapDataset.select_from_datasets(list(streams), selection)
