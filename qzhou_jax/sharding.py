"""Device mesh and the one sharding-rules object everything derives from.

The mesh has three named axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded, ZeRO-3 style) and `tensor` (Megatron-style: heads and MLP columns split). The model names every
weight and main activation with logical axes (model/qwen2.py), the batch names its fields' axes (batch.py), and
`ShardingRules` maps those names onto mesh axes. Weights and activations read separate tables: a weight's `embed`
axis is sharded over `fsdp`, an activation's is not (its batch axis is).

`ShardingRules.create(mesh, axis_sizes)` takes the size of every logical axis from the caller (`for_params`: from
a params tree's declared shapes, e.g. `model.abstract_params(config)`; this module never imports the model) and
decides ONCE, per axis name, whether its rule divides it; a rule that does not (e.g.
Qwen2.5-7B's 4 KV heads on a tensor axis of 8) is dropped for every weight, optimizer moment and activation
carrying that name, and logged once. Parameters and optimizer state get their specs from Flax's partition specs
of an `eval_shape`d boxed train state (optax keeps the boxes on its moments), so no path matching is involved.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils  # imported explicitly: `jax.experimental` does not load it on its own
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
    ("lora_rank", None),  # LoRA adapters: A [*in, lora_rank], B [lora_rank, *out] shard like their kernel's sides
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


# ------------------------------------------------------------------------------------------------------ mesh
def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """Mesh over (data, fsdp, tensor); one entry may be -1 to take the remaining devices.

    Devices are laid out by `mesh_utils.create_device_mesh` so that the innermost mesh axes map onto physically
    adjacent chips (ICI rings on TPU); shapes that do not fit the physical torus retry with
    `allow_split_physical_axes=True`. Only where neither works (e.g. a device subset) is plain order used, logged.
    """
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
    return Mesh(device_grid(shape, devices), MESH_AXES)


def device_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """Topology-aware device array for `shape` (see make_mesh); falls back to plain order with a log line."""
    errors = []
    for split in (False, True):
        try:
            return mesh_utils.create_device_mesh(tuple(shape), devices, allow_split_physical_axes=split)
        except (ValueError, NotImplementedError, AssertionError, KeyError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    kinds = sorted({getattr(d, "device_kind", "?") for d in devices})
    log.info("mesh_utils cannot lay out %s over %d %s devices (%s); using plain device order", list(shape),
             len(devices), "/".join(kinds), errors[-1])
    return np.asarray(devices, dtype=object).reshape(tuple(shape))


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def _flat(axes) -> tuple[str, ...]:
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


# ----------------------------------------------------------------------------------------------------- rules
def logical_axis_sizes(abstract_params, logical_specs) -> dict[str, int]:
    """{logical axis name: size} from a params tree and its logical specs; a name with two sizes is an error."""
    sizes: dict[str, int] = {}
    leaves = jax.tree.leaves(abstract_params)
    specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
    for leaf, names in zip(leaves, specs):
        for name, dim in zip(tuple(names), leaf.shape):
            if name is None:
                continue
            if sizes.setdefault(name, dim) != dim:
                raise ValueError(f"logical axis {name!r} has sizes {sizes[name]} and {dim} in the params")
    return sizes


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axes for weights (`params`) and activations / batch (`activations`), already
    resolved against the axis sizes: every shardings question in the project is answered from here."""

    mesh: Mesh
    params: tuple[tuple[str, Any], ...]
    activations: tuple[tuple[str, Any], ...]
    dropped: tuple[str, ...] = ()  # "name (size n) over axes (m)" for every rule that could not divide

    @classmethod
    def create(cls, mesh: Mesh, axis_sizes: Mapping[str, int], *, param_rules=PARAM_RULES,
               activation_rules=ACTIVATION_RULES) -> "ShardingRules":
        """Rules for `mesh` and the sizes of the logical axes ({name: size}, e.g. from `logical_axis_sizes`)."""
        dropped: dict[str, str] = {}

        def resolve(rules):
            out = []
            for name, axes in rules:
                n = _axis_size(mesh, axes)
                if axes is not None and name in axis_sizes and axis_sizes[name] % n:
                    dropped[name] = f"{name} (size {axis_sizes[name]}) over {axes} ({n})"
                    axes = None
                out.append((name, axes))
            return tuple(out)

        rules = cls(mesh, resolve(param_rules), resolve(activation_rules))
        for line in dropped.values():
            log.info("sharding rule does not divide %s: replicated", line)
        return dataclasses.replace(rules, dropped=tuple(dropped.values()))

    @classmethod
    def for_params(cls, mesh: Mesh, abstract_params, logical_specs) -> "ShardingRules":
        """Rules sized by a params tree and its logical specs: `for_params(mesh, *model.abstract_params(config))`."""
        return cls.create(mesh, logical_axis_sizes(abstract_params, logical_specs))

    # ---- specs
    def spec(self, names: Sequence[str | None], shape: Sequence[int] | None = None, *, kind: str = "param") -> P:
        """PartitionSpec for logical axis names. Axes not resolved at creation (e.g. `batch`, whose size varies
        by task) must divide when `shape` is given: a batch that cannot be split is an error, not a silent
        replication. A mesh axis is used at most once per array."""
        table = dict(self.params if kind == "param" else self.activations)
        used: set[str] = set()
        spec = []
        for i, name in enumerate(names):
            axes = table.get(name) if name is not None else None
            if axes is not None and used & set(_flat(axes)):
                axes = None
            if axes is not None and shape is not None and shape[i] % _axis_size(self.mesh, axes):
                raise ValueError(f"axis {name!r} of size {shape[i]} cannot be split over mesh axes {axes} "
                                 f"({_axis_size(self.mesh, axes)} devices) of mesh {dict(self.mesh.shape)}")
            used |= set(_flat(axes))
            spec.append(axes)
        return P(*spec)

    def sharding(self, names: Sequence[str | None], shape: Sequence[int] | None = None, *,
                 kind: str = "param") -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names, shape, kind=kind))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def tree_shardings(self, logical_specs) -> Any:
        """NamedShardings for a tree of logical PartitionSpecs (e.g. `nn.get_partition_spec` of a boxed
        train state); leaves without names (step, counters) are replicated."""
        def one(names):
            return self.replicated() if names is None else self.sharding(tuple(names))
        return jax.tree.map(one, logical_specs, is_leaf=lambda x: isinstance(x, P) or x is None)

    def boxed_shardings(self, boxed_tree) -> Any:
        """Shardings of an eval_shaped tree whose leaves are (possibly) Flax `Partitioned` boxes."""
        return self.tree_shardings(nn.get_partition_spec(boxed_tree))

    def logical_axis_rules(self) -> tuple[tuple[str, Any], ...]:
        """The activation table, for `flax.linen.logical_axis_rules` inside the step."""
        return self.activations

    @property
    def batch_devices(self) -> int:
        """Devices the batch axis is split over."""
        return _axis_size(self.mesh, dict(self.activations).get("batch"))


def box(abstract_params, logical_specs):
    """Re-attaches logical names to unboxed (abstract) params as Flax `Partitioned` boxes, so that anything
    built from them under eval_shape (the optimizer's moments) carries the names too."""
    return jax.tree.map(lambda leaf, names: nn.Partitioned(leaf, tuple(names)), abstract_params, logical_specs,
                        is_leaf=lambda x: isinstance(x, P))


# ---------------------------------------------------------------------------------------- thin conveniences
def param_shardings(abstract, logical_specs, mesh: Mesh):
    """NamedShardings for a params-shaped pytree from its logical PartitionSpecs (model.abstract_params)."""
    return ShardingRules.for_params(mesh, abstract, logical_specs).tree_shardings(logical_specs)


def activation_rules(mesh: Mesh, abstract_params, logical_specs):
    """Activation rules for `nn.logical_axis_rules`, minus those the params' axis sizes can't divide."""
    return ShardingRules.for_params(mesh, abstract_params, logical_specs).logical_axis_rules()


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over data and fsdp, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

