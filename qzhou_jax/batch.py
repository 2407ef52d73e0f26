"""The typed training batch: ONE table names every field, its dtype, its logical axes and whether it may be absent.

    FIELDS["cand_ids"] = Field("int32", ("batch", "cand", "length"), side="cand")

`Batch` is a pytree (a Flax struct) generated from the table: `batch.cand_ids`, `batch.replace(...)`, absent
optional fields are None (no leaves). Its shardings (`shardings`), its abstract form for ahead-of-time compiling
(`abstract`), GradCache's chunking (`chunk_inputs`: every `side` field, along its `batch` axis) and token counting
(`count_tokens`) all read the table, so a new field is one row: e.g. the duplicate masks' per-text hashes
`anchor_hash = Field("uint32", ("batch",), required=False)`, or packed inputs with `side="anchor"`.

Host batches (numpy dicts from data/tokenize.py) become `Batch`es with `from_host`, which checks every field's
rank and dtype against the table and names what is wrong; host-only keys (HOST_KEYS) stay on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from qzhou_jax.constraints import replicated


@dataclasses.dataclass(frozen=True)
class Field:
    dtype: str                   # numpy dtype name the field must have
    axes: tuple[str, ...]        # logical axis names, one per dimension (sharding.ShardingRules maps them)
    required: bool = True        # False: may be None / absent (a task without it, or a feature switched off)
    side: str | None = None      # "anchor" / "cand": a model input of that side (GradCache chunks it)
    doc: str = ""


FIELDS: dict[str, Field] = {
    # Padded token inputs: present unless the batch is packed (then the packed_* fields replace them).
    "anchor_ids": Field("int32", ("batch", "length"), required=False, side="anchor",
                        doc="query / text_a / text to classify"),
    "anchor_mask": Field("int32", ("batch", "length"), required=False, side="anchor", doc="1 = real token"),
    "cand_ids": Field("int32", ("batch", "cand", "length"), required=False, side="cand",
                      doc="[positive, negatives...]"),
    "cand_mask": Field("int32", ("batch", "cand", "length"), required=False, side="cand"),
    "cand_valid": Field("bool", ("batch", "cand"), doc="False: a padding candidate"),
    "score": Field("float32", ("batch",), required=False, doc="pair-score gold (CoSENT)"),
    "labels": Field("int32", ("batch", "label"), required=False, doc="classification labels, anchor then cands"),
    # Normalised-text hashes (data/transforms.text_hash): equal texts are never each other's negatives (losses.py).
    "anchor_hash": Field("int32", ("batch",), required=False, doc="hash of the anchor's normalised text"),
    "cand_hash": Field("int32", ("batch", "cand"), required=False, doc="per candidate; 0 for padding candidates"),
    # Sequence packing (data/packing.py): the texts of the batch end to end in R rows of T tokens.
    "packed_ids": Field("int32", ("batch", "length"), required=False, doc="[R, T] token ids"),
    "packed_segment_ids": Field("int32", ("batch", "length"), required=False, doc="[R, T] 1..k per row, 0 = pad"),
    "packed_segment_lengths": Field("int32", ("batch", "segment"), required=False, doc="[R, S] tokens per segment"),
    "packed_anchor_index": Field("int32", ("batch",), required=False, doc="[B] flat row * S + segment - 1"),
    "packed_cand_index": Field("int32", ("batch", "cand"), required=False, doc="[B, C]; -1: empty candidate"),
}
_PADDED = ("anchor_ids", "anchor_mask", "cand_ids", "cand_mask")
_PACKED = ("packed_ids", "packed_segment_ids", "packed_segment_lengths", "packed_anchor_index", "packed_cand_index")
HOST_KEYS = ("dataset_id",)  # in host batches, read by the loop, never sent to devices


def _batch_methods():
    def from_host(cls, arrays: Mapping[str, Any], *, where: str = "batch") -> "Batch":
        """Checks `arrays` (numpy or jax) against FIELDS: every required field present, ranks and dtypes as the
        table says, no unknown key (a field the table lacks would otherwise be dropped silently)."""
        unknown = sorted(set(arrays) - set(FIELDS) - set(HOST_KEYS))
        if unknown:
            raise KeyError(f"{where}: unknown field(s) {unknown}; add a row to qzhou_jax/batch.py FIELDS")
        values = {}
        for name, field in FIELDS.items():
            value = arrays.get(name)
            if value is None:
                if field.required:
                    raise KeyError(f"{where}: required field {name!r} is missing")
                values[name] = None
                continue
            if np.ndim(value) != len(field.axes):
                raise ValueError(f"{where}: field {name!r} must have rank {len(field.axes)} {field.axes}, "
                                 f"got shape {tuple(np.shape(value))}")
            if np.dtype(value.dtype) != np.dtype(field.dtype):
                raise TypeError(f"{where}: field {name!r} must be {field.dtype}, got {value.dtype}")
            values[name] = value
        for group in (_PADDED, _PACKED):
            given = [n for n in group if values[n] is not None]
            if given and len(given) != len(group):
                raise KeyError(f"{where}: fields {sorted(set(group) - set(given))} are missing (they come together)")
        if (values["anchor_ids"] is None) == (values["packed_ids"] is None):
            raise KeyError(f"{where}: a batch has either the padded token fields {list(_PADDED)} or the packed ones "
                           f"{list(_PACKED)}, not {'both' if values['anchor_ids'] is not None else 'neither'}")
        return cls(**values)

    def present(self) -> dict[str, Any]:
        """{name: array} of the fields that are not None."""
        return {n: getattr(self, n) for n in FIELDS if getattr(self, n) is not None}

    def size(self) -> int:
        return self.cand_valid.shape[0]

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

    return dict(from_host=classmethod(from_host), present=present, size=property(size), packed=property(packed),
                side_inputs=side_inputs, count_tokens=count_tokens, shapes=shapes)


def _make_batch_class():
    """The Batch pytree class, one attribute per FIELDS row (None by default)."""
    cls = flax.struct.dataclass(type("Batch", (), {
        "__annotations__": {name: Any for name in FIELDS}, **{name: None for name in FIELDS}, **_batch_methods()}))
    cls.__module__ = __name__
    cls.__doc__ = "The global training batch: one attribute per FIELDS row (None where an optional one is absent)."
    return cls


Batch = _make_batch_class()


# -------------------------------------------------------------------------------------------- shardings
def field_sharding(rules, name: str, shape=None):
    """NamedSharding of one field from its logical axes through the rules (activation table)."""
    return rules.sharding(FIELDS[name].axes, shape, kind="activation")


def host_shardings(rules, names=None) -> dict[str, Any]:
    """{field: NamedSharding} for `names` (default: every field), for data/global_batch.to_global."""
    return {n: field_sharding(rules, n) for n in (names if names is not None else FIELDS)}


def shardings(rules, batch: "Batch") -> "Batch":
    """A Batch of NamedShardings with `batch`'s structure (present fields only); shapes are checked to divide."""
    return Batch(**{n: field_sharding(rules, n, v.shape) for n, v in batch.present().items()})


def abstract(task: str, *, batch_size: int, num_candidates: int, query_len: int, passage_len: int,
             rules=None) -> "Batch":
    """ShapeDtypeStructs (with shardings when `rules` is given) of a task's batch, for ahead-of-time compiling.
    Dimension sizes per logical axis; a field whose axes are not all known here must be optional."""
    sizes = {"batch": batch_size, "cand": num_candidates, "label": 1 + num_candidates}
    fields = {}
    for name, field in FIELDS.items():
        if name == "score" and task != "pair_score" or name == "labels" and task != "classification":
            continue
        if name in _PACKED:  # the padded layout (packed shapes depend on the data)
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
    return Batch(**fields)
