"""Device mesh and logical-axis sharding rules.

The mesh has three named axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded, ZeRO-3 style) and `tensor` (Megatron-style: heads and MLP columns split). The model names every
weight and main activation with logical axes (model/qwen2.py); the rules below map those names onto mesh axes.
Weights and activations get separate rule sets: a weight's `embed` axis is sharded over `fsdp`, an activation's
`embed` axis is not (its batch axis is).

A rule whose mesh axes do not divide the dimension is dropped for that array (replicated there) instead of
failing: e.g. Qwen2.5-7B's 4 KV heads on a tensor axis of 8.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

PARAM_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)
ACTIVATION_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """Mesh over (data, fsdp, tensor); one entry may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot fill mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {shape} needs {math.prod(shape)} devices, have {len(devices)}")
    try:
        grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU / odd topologies: plain order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=PARAM_RULES) -> P:
    """PartitionSpec for one array from its logical axis names; rules that don't divide are dropped."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if axes is None or dim % _axis_size(mesh, axes) or used & set(flat):
            if axes is not None and _axis_size(mesh, axes) > 1 and dim % _axis_size(mesh, axes):
                log.info("axis %r of size %d not divisible by mesh %s: replicated", name, dim, axes)
            spec.append(None)
        else:
            used |= set(flat)
            spec.append(axes)
    return P(*spec)


def param_shardings(abstract, logical_specs, mesh: Mesh):
    """NamedShardings for a params-shaped pytree from its logical PartitionSpecs (model.abstract_params)."""
    def one(leaf, names):
        return NamedSharding(mesh, logical_to_spec(tuple(names), leaf.shape, mesh))
    return jax.tree.map(one, abstract, logical_specs, is_leaf=lambda x: isinstance(x, P))


def activation_rules(mesh: Mesh, model_config=None):
    """Activation rules for `nn.logical_axis_rules`, minus those the model's head counts can't divide."""
    rules = []
    for name, axes in ACTIVATION_RULES:
        if model_config is not None and name in ("heads", "kv_heads", "mlp"):
            dim = {"heads": model_config.num_heads, "kv_heads": model_config.num_kv_heads,
                   "mlp": model_config.intermediate_size}[name]
            if dim % _axis_size(mesh, axes):
                axes = None
        rules.append((name, axes))
    return tuple(rules)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over data and fsdp, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(opt_state_abstract: Any, params_shardings: Any, mesh: Mesh):
    """Optimizer moments follow their params' sharding (matched by shape and tree position); scalars replicate."""
    flat_params = {tuple(str(k) for k in path): s for path, s in
                   jax.tree_util.tree_flatten_with_path(params_shardings)[0]}

    def one(path, leaf):
        keys = tuple(str(k) for k in path)
        for n in range(len(keys)):
            if keys[n:] in flat_params:
                sharding = flat_params[keys[n:]]
                if len(sharding.spec) <= leaf.ndim:
                    return sharding
        return replicated(mesh)
    return jax.tree_util.tree_map_with_path(one, opt_state_abstract)
