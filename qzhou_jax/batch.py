"""The typed training batch on the devices: `Batch`, a pytree dataclass with one attribute per row of the batch
schema (qzhou_jax/batch_schema.py FIELDS: dtype, logical axes, required or optional) and the batch's task type.

    batch.cand_ids, batch.task, batch.replace(...); absent optional fields are None (no leaves)

`task` is static pytree metadata (not an array): a batch holds one dataset, so one task type, and it picks the
loss (losses.task_loss) and, through the pytree structure, the compiled step. Its shardings (`shardings`), its
abstract form for ahead-of-time compiling (`abstract`), GradCache's chunking (`side_inputs`: every `side` field,
along its `batch` axis) and token counting (`count_tokens`) all read the schema table.

Host batches (numpy dicts from data/tokenize.py, data/packing.py) become `Batch`es once, at the device boundary
(`from_host`, called by train/loop.to_device_batch), which checks every field against the table -- rank, dtype,
and that each logical axis has one size across fields -- and names what is wrong. Nothing downstream re-checks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from qzhou_jax.constraints import replicated
from qzhou_jax.batch_schema import FIELDS, HOST_KEYS, PACKED, PADDED_TOKENS, TASK_FIELDS, Field

__all__ = ["Batch", "FIELDS", "Field", "HOST_KEYS", "abstract", "check_declared_fields", "field_sharding",
           "host_shardings", "shardings"]

Array = Optional[Any]  # a jax / numpy array, a ShapeDtypeStruct or a NamedSharding (the same tree), or None


@flax.struct.dataclass
class Batch:
    """The global training batch: the schema's fields (batch_schema.py FIELDS documents each), None where absent."""

    anchor_ids: Array = None
    anchor_mask: Array = None
    cand_ids: Array = None
    cand_mask: Array = None
    cand_valid: Array = None
    score: Array = None
    labels: Array = None
    anchor_hash: Array = None
    cand_hash: Array = None
    packed_ids: Array = None
    packed_segment_ids: Array = None
    packed_segment_lengths: Array = None
    packed_anchor_index: Array = None
    packed_cand_index: Array = None
    task: str | None = flax.struct.field(pytree_node=False, default=None)  # 'retrieval' | 'pair_score' | ...

    @classmethod
    def from_host(cls, arrays: Mapping[str, Any], *, task: str | None = None, where: str = "batch") -> "Batch":
        """Checks `arrays` (numpy or jax; host keys allowed and dropped) against the schema: every required field
        present, ranks and dtypes as the table says, one size per logical axis, no unknown key. `task` defaults to
        the host batch's own 'task' key."""
        unknown = sorted(set(arrays) - set(FIELDS) - set(HOST_KEYS))
        if unknown:  # a field the table lacks would otherwise be dropped silently
            raise KeyError(f"{where}: unknown field(s) {unknown}; add a row to qzhou_jax/batch_schema.py FIELDS")
        task = task if task is not None else arrays.get("task")
        values = {}
        for name, field in FIELDS.items():
            value = arrays.get(name)
            if value is None:
                if field.required:
                    raise KeyError(f"{where}: required field {name!r} is missing")
                continue
            if np.ndim(value) != len(field.axes):
                raise ValueError(f"{where}: field {name!r} must have rank {len(field.axes)} {field.axes}, "
                                 f"got shape {tuple(np.shape(value))}")
            if np.dtype(value.dtype) != np.dtype(field.dtype):
                raise TypeError(f"{where}: field {name!r} must be {field.dtype}, got {value.dtype}")
            values[name] = value
        for group in (PADDED_TOKENS, PACKED):
            given = [n for n in group if n in values]
            if given and len(given) != len(group):
                raise KeyError(f"{where}: fields {sorted(set(group) - set(given))} are missing (they come together)")
        if ("anchor_ids" in values) == ("packed_ids" in values):
            raise KeyError(f"{where}: a batch has either the padded token fields {list(PADDED_TOKENS)} or the packed "
                           f"ones {list(PACKED)}, not {'both' if 'anchor_ids' in values else 'neither'}")
        _check_axis_sizes(values, where)
        if task is not None:
            _check_task_fields(str(task), values, where)
        return cls(**values, task=None if task is None else str(task))

    def present(self) -> dict[str, Any]:
        """{name: array} of the fields that are not None."""
        return {n: getattr(self, n) for n in FIELDS if getattr(self, n) is not None}

    @property
    def size(self) -> int:
        return self.cand_valid.shape[0]

    @property
    def packed(self) -> bool:
        return self.packed_ids is not None

    def side_inputs(self, side: str) -> dict[str, Any]:
        """The model inputs of one side ("anchor" / "cand"), present ones only."""
        return {n: v for n, v in self.present().items() if FIELDS[n].side == side}

    def count_tokens(self) -> tuple[Any, Any]:
        """Real (non-pad) tokens of the anchors and of the valid candidates."""
        if self.packed_ids is not None:
            lengths = replicated(self.packed_segment_lengths.reshape(-1))
            tokens = lambda index: jnp.where(index >= 0, jnp.take(lengths, jnp.maximum(index, 0)), 0)  # noqa: E731
            return tokens(self.packed_anchor_index).sum(), (tokens(self.packed_cand_index) * self.cand_valid).sum()
        cand = self.cand_mask.sum(-1) * self.cand_valid
        return self.anchor_mask.sum(), cand.sum()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(v.shape) for n, v in self.present().items()}


def check_declared_fields(cls=Batch) -> None:
    """The class spells its fields out for readers and type checkers; the schema table stays the one source of
    their meaning, and this (run at import) keeps the two from drifting apart: a new field is a row in
    batch_schema.py FIELDS plus its attribute here."""
    declared = [f.name for f in dataclasses.fields(cls) if f.name != "task"]
    if declared != list(FIELDS):
        raise TypeError(f"{cls.__name__}'s fields {declared} differ from batch_schema.py FIELDS {list(FIELDS)}")


check_declared_fields()


def _check_axis_sizes(values: Mapping[str, Any], where: str) -> None:
    """Every logical axis has one size across the fields that carry it (token lengths per side, packed rows apart
    from examples, 'label' = 1 + 'cand'), so a mismatch is named here, not met as a broadcasting error in a loss."""
    seen: dict[str, tuple[int, str]] = {}
    for name, value in values.items():
        field = FIELDS[name]
        for axis, size in zip(field.axes, np.shape(value)):
            if axis == "label":
                axis, size = "cand", size - 1
            if axis == "length":
                axis = f"length of {field.side or 'packed rows'}"
            elif axis == "batch" and name in PACKED and field.axes[-1] in ("length", "segment"):  # packed_* rows are not examples
                axis = "packed rows"
            size_first, first = seen.setdefault(axis, (size, name))
            if size_first != size:
                raise ValueError(f"{where}: fields {first!r} {tuple(np.shape(values[first]))} and {name!r} "
                                 f"{tuple(np.shape(value))} disagree on the {axis} axis")


def _check_task_fields(task: str, values: Mapping[str, Any], where: str) -> None:
    if task not in TASK_FIELDS:
        raise ValueError(f"{where}: unknown task {task!r}; expected one of {tuple(TASK_FIELDS)}")
    missing = [n for n in TASK_FIELDS[task] if n not in values]
    if missing:
        raise KeyError(f"{where}: a {task} batch needs field(s) {missing}")
    if task == "pair_score" and values["cand_valid"].shape[1] != 1:  # CoSENT scores (text_a, text_b) pairs
        raise ValueError(f"{where}: a pair_score batch has one candidate (text_b) per row, got "
                         f"{values['cand_valid'].shape[1]}")


# -------------------------------------------------------------------------------------------- shardings
def field_sharding(rules, name: str, shape=None):
    """NamedSharding of one field from its logical axes through the rules (activation table)."""
    return rules.sharding(FIELDS[name].axes, shape, kind="activation")


def host_shardings(rules, names=None) -> dict[str, Any]:
    """{field: NamedSharding} for `names` (default: every field), for data/global_batch.to_global."""
    return {n: field_sharding(rules, n) for n in (names if names is not None else FIELDS)}


def shardings(rules, batch: Batch) -> Batch:
    """A Batch of NamedShardings with `batch`'s structure (present fields and task); shapes are checked to divide."""
    return Batch(**{n: field_sharding(rules, n, v.shape) for n, v in batch.present().items()}, task=batch.task)


def abstract(task: str, *, batch_size: int, num_candidates: int, query_len: int, passage_len: int,
             rules=None) -> Batch:
    """ShapeDtypeStructs (with shardings when `rules` is given) of a task's padded batch, for ahead-of-time
    compiling. Dimension sizes per logical axis; a field whose axes are not all known here must be optional."""
    sizes = {"batch": batch_size, "cand": num_candidates, "label": 1 + num_candidates}
    fields = {}
    for name, field in FIELDS.items():
        if name == "score" and task != "pair_score" or name == "labels" and task != "classification":
            continue
        if name in PACKED:  # the padded layout (packed shapes depend on the data)
            continue
        if field.side is not None:
            length = query_len if field.side == "anchor" else passage_len
            shape = tuple(length if a == "length" else sizes[a] for a in field.axes)
        elif all(a in sizes for a in field.axes):
            shape = tuple(sizes[a] for a in field.axes)
        elif field.required:
            raise ValueError(f"cannot size field {name!r} with axes {field.axes}")
        else:
            continue
        sharding = field_sharding(rules, name, shape) if rules is not None else None
        fields[name] = jax.ShapeDtypeStruct(shape, jnp.dtype(field.dtype), sharding=sharding)
    return Batch(**fields, task=task)
