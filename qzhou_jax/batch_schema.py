"""The batch schema: ONE table names every field of a training batch, its dtype, logical axes and whether it may be
absent. Pure Python and NumPy with no project imports, below everything that makes or reads batches: the host side
builds its arrays from it (data/tokenize.py, data/packing.py, data/pipeline.py, data/global_batch.py, without JAX)
and the device side's typed `Batch` (qzhou_jax/batch.py) declares one attribute per row, checked against it.

    FIELDS["cand_ids"] = Field("int32", ("batch", "cand", "length"), side="cand")

Two host-only keys travel with every host batch and never reach the devices as arrays: `dataset_id` (per row, the
mixture index: per-dataset loss curves) and `task` (one string per batch: a batch holds one dataset, so one task
type; it picks the step and the loss).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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
                        doc="query / text_a / text to classify, right-padded"),
    "anchor_mask": Field("int32", ("batch", "length"), required=False, side="anchor", doc="1 = real token"),
    "cand_ids": Field("int32", ("batch", "cand", "length"), required=False, side="cand",
                      doc="[positive, negatives...]; C = 1 for pair_score"),
    "cand_mask": Field("int32", ("batch", "cand", "length"), required=False, side="cand"),
    "cand_valid": Field("bool", ("batch", "cand"), doc="False: a padding candidate (text \"\")"),
    "score": Field("float32", ("batch",), required=False, doc="pair-score gold (CoSENT); 0 for other tasks"),
    "labels": Field("int32", ("batch", "label"), required=False,
                    doc="classification label ids, anchor then candidates; -1 for other tasks"),
    # Normalised-text hashes (data/transforms.text_hash): equal texts are never each other's negatives (losses).
    "anchor_hash": Field("int32", ("batch",), required=False, doc="hash of the anchor's normalised text"),
    "cand_hash": Field("int32", ("batch", "cand"), required=False, doc="per candidate; 0 for padding candidates"),
    # Sequence packing (data/packing.py): the texts of the batch end to end in R rows of T tokens.
    "packed_ids": Field("int32", ("batch", "length"), required=False, doc="[R, T] token ids"),
    "packed_segment_ids": Field("int32", ("batch", "length"), required=False, doc="[R, T] 1..k per row, 0 = pad"),
    "packed_segment_lengths": Field("int32", ("batch", "segment"), required=False, doc="[R, S] tokens per segment"),
    "packed_anchor_index": Field("int32", ("batch",), required=False, doc="[B] flat row * S + segment - 1; -1 empty"),
    "packed_cand_index": Field("int32", ("batch", "cand"), required=False, doc="[B, C]; -1: empty candidate"),
}
PADDED_TOKENS = tuple(n for n, f in FIELDS.items() if f.side is not None)  # the padded layout's model inputs
PACKED = tuple(n for n in FIELDS if n.startswith("packed_"))               # the packed layout's
# The fields a batch of each task type must carry beyond the required ones: what its loss reads (losses/).
TASK_FIELDS = {"retrieval": (), "pair_score": ("score",), "classification": ("labels",)}
HOST_KEYS = ("dataset_id", "task")  # in host batches only: read by the loop, never sent to devices


def device_fields(host_batch: Mapping[str, Any]) -> list[str]:
    """The schema fields a host batch holds (present and not None), in table order."""
    return [n for n in FIELDS if host_batch.get(n) is not None]


def array(name: str, values: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """`values` as field `name`'s numpy array: the table's dtype, optionally reshaped (the collators' one way)."""
    x = np.asarray(values, dtype=FIELDS[name].dtype)
    return x.reshape(shape) if shape is not None else x
