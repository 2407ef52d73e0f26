"""Merge formulas over param trees: linear (model soup), SLERP, TIES. `python -m qzhou_jax.merge` is the CLI.

Every method works tensor by tensor, where a tensor is one Hugging Face weight (a scanned, stacked layer leaf is
split into its layers), so the results are mergekit's on the same checkpoints:
- linear (Wortsman et al. 2022, KaLM-Embedding's model soup): sum_i w_i theta_i, divided by sum_i w_i when
  `normalize` (mergekit's default);
- slerp (two models; Qwen3-Embedding): t = w_2 / (w_1 + w_2); per tensor, the angle between the two tensors'
  directions, theta = arccos(<v0/|v0|, v1/|v1|>), and sin((1-t) theta)/sin(theta) v0 + sin(t theta)/sin(theta) v1;
  nearly parallel tensors (|cos| > 0.9995) fall back to linear interpolation (mergekit's rule);
- ties (Yadav et al. 2023): task vectors tau_i = theta_i - theta_base, each trimmed to its top `density` fraction
  by magnitude; the sign elected per entry as the sign of sum_i w_i tau_i ("sum" consensus); the entries agreeing
  with it averaged, sum_i w_i tau_i [agree] / sum_i w_i [agree] (`normalize`), times `scale` (TIES' lambda),
  added to the base. mergekit's `ties` merge method does exactly this.
Computation is float32 numpy on the host, one tensor at a time; the inputs are held in memory (N models + base).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from qzhou_jax.cli_errors import UsageError

METHODS = ("linear", "slerp", "ties")
DOT_THRESHOLD = 0.9995
EPS = 1e-8


# ---------------------------------------------------------------------------------------------- per tensor
def linear(tensors: Sequence[np.ndarray], weights: Sequence[float], normalize: bool = True) -> np.ndarray:
    out = sum(float(w) * np.asarray(t, np.float32) for w, t in zip(weights, tensors))
    total = float(sum(weights))
    return out / total if normalize and abs(total) > EPS else out


def slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = DOT_THRESHOLD) -> np.ndarray:
    v0, v1 = np.asarray(v0, np.float32), np.asarray(v1, np.float32)
    n0 = v0 / max(float(np.linalg.norm(v0)), EPS)
    n1 = v1 / max(float(np.linalg.norm(v1)), EPS)
    dot = float(np.sum(n0.astype(np.float64) * n1))
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    s0, s1 = np.sin((1 - t) * theta) / sin_theta, np.sin(t * theta) / sin_theta
    return (s0 * v0 + s1 * v1).astype(np.float32)


def magnitude_trim(delta: np.ndarray, density: float) -> np.ndarray:
    """The top `density` fraction of entries by |delta| (k = int(density * size)); the rest zero."""
    if density >= 1:
        return delta
    k = int(density * delta.size)
    if k < 1:
        raise UsageError(f"density {density} keeps no entry of a tensor of {delta.size}")
    flat = delta.reshape(-1)
    keep = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def ties(base: np.ndarray, tensors: Sequence[np.ndarray], weights: Sequence[float], density: float,
         scale: float = 1.0, normalize: bool = True) -> np.ndarray:
    base = np.asarray(base, np.float32)
    deltas = np.stack([magnitude_trim(np.asarray(t, np.float32) - base, density) for t in tensors])
    w = np.asarray(weights, np.float32).reshape((-1,) + (1,) * base.ndim)
    weighted = deltas * w
    majority = np.where(weighted.sum(0) >= 0, 1.0, -1.0).astype(np.float32)
    agree = np.sign(weighted) == majority
    mixed = (weighted * agree).sum(0)
    if normalize:
        divisor = (w * agree).sum(0)
        mixed = mixed / np.where(divisor == 0, 1.0, divisor)
    return base + scale * mixed


# ------------------------------------------------------------------------------------------------ trees
def _per_tensor(fn: Callable[..., np.ndarray], leaves: Sequence, stacked: bool) -> np.ndarray:
    """fn over whole leaves, or layer by layer for a stacked [L, ...] leaf."""
    arrays = [np.asarray(jax.device_get(x), np.float32) for x in leaves]
    if not stacked:
        return fn(*arrays)
    return np.stack([fn(*[a[i] for a in arrays]) for i in range(arrays[0].shape[0])])


def merge_trees(method: str, trees: Sequence, weights: Sequence[float] | None = None, *, base=None,
                density: float = 1.0, scale: float = 1.0, normalize: bool = True,
                stacked: Callable[[tuple], bool] = lambda path: False):
    """Merged params tree (float32 numpy leaves) of `trees` (same structure and shapes). `stacked(path)` says
    which leaves stack layers along axis 0 (scanned params: those under "layers"); each layer is its own tensor."""
    if method not in METHODS:
        raise UsageError(f"merge method must be one of {METHODS}, got {method!r}")
    if len(trees) < 2:
        raise UsageError(f"merging needs two or more models, got {len(trees)}")
    weights = [1.0] * len(trees) if weights is None else [float(w) for w in weights]
    if len(weights) != len(trees):
        raise UsageError(f"{len(weights)} weights for {len(trees)} models")
    if method == "slerp":
        if len(trees) != 2:
            raise UsageError(f"slerp merges exactly two models, got {len(trees)}")
        if min(weights) < 0 or sum(weights) <= 0:
            raise UsageError(f"slerp weights must be >= 0 and not both 0, got {weights}")
        t = weights[1] / sum(weights)

        def fn(a, b):
            return slerp(t, a, b)
    elif method == "linear":
        def fn(*ts):
            return linear(ts, weights, normalize)
    else:
        if base is None:
            raise UsageError("ties needs a base model (the models' common ancestor): --base")
        if not 0 < density <= 1:
            raise UsageError(f"ties density must be in (0, 1], got {density}")

        def fn(b, *ts):
            return ties(b, ts, weights, density, scale, normalize)
    inputs = ([base] if method == "ties" else []) + list(trees)
    structure = jax.tree.structure(inputs[0])
    for i, tree in enumerate(inputs[1:], 1):
        if jax.tree.structure(tree) != structure:
            raise UsageError(f"model {i} has a different parameter structure than model 0")
    paths_leaves = [jax.tree_util.tree_flatten_with_path(t)[0] for t in inputs]
    merged = []
    for j, (path, leaf) in enumerate(paths_leaves[0]):
        leaves = [pl[j][1] for pl in paths_leaves]
        shapes = {tuple(x.shape) for x in leaves}
        if len(shapes) != 1:
            raise UsageError(f"{jax.tree_util.keystr(path)}: shapes differ between models {sorted(shapes)}")
        merged.append(_per_tensor(fn, leaves, stacked(path)))
    return jax.tree.unflatten(structure, merged)


def scanned_layers(path) -> bool:
    """`stacked` for scanned params: every leaf under the top-level "layers"."""
    return bool(path) and str(getattr(path[0], "key", path[0])) == "layers"
