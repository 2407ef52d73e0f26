"""Sequence packing (host side, pure NumPy): the texts of a padded batch -> rows of a fixed token budget.

A padded retrieval batch spends most of its tokens on padding (queries of 20 tokens padded to 256, passages of 150
padded to 1536). `pack_batch` lays the anchors and every candidate of the batch end to end into rows of
`row_length` tokens, each text a segment with its own id, so one forward over the packed rows computes every
embedding: attention never crosses segments (model/attention.py), positions restart per segment
(model/masks.py), and pooling is per segment (model/pooling.py `embed_segments`). The result equals the padded
path's embeddings (tests/data/test_packing.py).

The packed layout replaces the padded token fields (anchor_ids / anchor_mask / cand_ids / cand_mask) with the
schema's packed_* fields (batch_schema.py: packed_ids and packed_segment_ids [R, T], 1..k per row, 0 = padding;
packed_segment_lengths [R, S]; packed_anchor_index [B] and packed_cand_index [B, C], the flat index row * S +
(segment - 1) of each text, -1 for an empty one); every other key of the padded batch passes through. A batch with
`packed_ids` takes the packed branch of train/step.embed_batch. Positions are not stored: the model derives them
from the segment ids (one source of truth).

Shapes stay bounded so compilation does: T is fixed, the row count R is rounded up to a geometric ladder
(ratio 2**(1/4), multiples of `row_multiple`, at most the number of texts) and S up to a power of two.
Placement is first-fit decreasing: deterministic, and at most 11/9 of the optimal row count plus one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.batch_schema import PACKED, PADDED_TOKENS

ROW_RATIO = 2 ** 0.25


def row_bucket(rows: int, max_rows: int, multiple: int = 1) -> int:
    """Smallest rung >= rows of the ladder multiple * ceil(ROW_RATIO**k), capped at max_rows rounded up."""
    cap = -(-max_rows // multiple) * multiple
    rung = multiple
    while rung < rows and rung < cap:
        rung = min(cap, -(-math.ceil(rung * ROW_RATIO) // multiple) * multiple)
    return max(rung, -(-rows // multiple) * multiple)


def segment_bucket(segments: int) -> int:
    return 1 << max(0, segments - 1).bit_length()


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Row of each item (-1 for zero-length items): longest first, each into the first row with room."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > capacity:
        raise UsageError(f"a text of {int(lengths.max())} tokens does not fit a packed row of {capacity} tokens; "
                         "set data.packing to at least the longest max_len_query / max_len_passage")
    row_of = np.full(lengths.shape, -1, np.int64)
    free = np.empty(0, np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        n = lengths[i]
        if n == 0:
            continue
        fits = np.flatnonzero(free >= n)
        if fits.size:
            row_of[i] = fits[0]
            free[fits[0]] -= n
        else:
            row_of[i] = free.size
            free = np.append(free, capacity - n)
    return row_of


def pack_batch(batch: Mapping[str, np.ndarray], row_length: int, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """A padded host batch (tokenize.py layout, right-padded) -> the packed layout above."""
    anchor_ids, anchor_mask = np.asarray(batch["anchor_ids"]), np.asarray(batch["anchor_mask"])
    cand_ids, cand_mask = np.asarray(batch["cand_ids"]), np.asarray(batch["cand_mask"])
    b, c, _ = cand_ids.shape
    # Texts in a flat order: the B anchors, then the B * C candidates row-major.
    texts = [row[m > 0] for row, m in zip(anchor_ids, anchor_mask)]
    texts += [row[m > 0] for row, m in zip(cand_ids.reshape(b * c, -1), cand_mask.reshape(b * c, -1))]
    lengths = np.array([len(t) for t in texts], np.int64)
    row_of = first_fit_decreasing(lengths, row_length)

    used_rows = int(row_of.max()) + 1 if lengths.any() else 0
    rows = row_bucket(max(used_rows, 1), len(texts), row_multiple)
    ids = np.zeros((rows, row_length), np.int32)
    seg_ids = np.zeros((rows, row_length), np.int32)
    fill = np.zeros(rows, np.int64)
    count = np.zeros(rows, np.int64)
    segment_of = np.full(len(texts), -1, np.int64)
    for i in np.flatnonzero(row_of >= 0):  # in text order, so a row's segments follow the batch order
        r, n = row_of[i], lengths[i]
        ids[r, fill[r]:fill[r] + n] = texts[i]
        count[r] += 1
        seg_ids[r, fill[r]:fill[r] + n] = count[r]
        segment_of[i] = count[r] - 1
        fill[r] += n

    segments = segment_bucket(int(count.max()) if rows else 1)
    seg_lengths = np.zeros((rows, segments), np.int32)
    placed = row_of >= 0
    seg_lengths[row_of[placed], segment_of[placed]] = lengths[placed]
    flat = np.where(placed, row_of * segments + segment_of, -1).astype(np.int32)

    out = {k: v for k, v in batch.items() if k not in PADDED_TOKENS}
    out.update(packed_ids=ids, packed_segment_ids=seg_ids, packed_segment_lengths=seg_lengths,
               packed_anchor_index=flat[:b], packed_cand_index=flat[b:].reshape(b, c))
    return out


def padding_fraction(batch: Mapping[str, np.ndarray]) -> float:
    """Share of the token slots the model computes on that are padding (packed or padded batch)."""
    if "packed_ids" in batch:
        seg = np.asarray(batch["packed_segment_ids"])
        return float((seg == 0).mean())
    slots = np.asarray(batch["anchor_mask"]).size + np.asarray(batch["cand_mask"]).size
    real = np.asarray(batch["anchor_mask"]).sum() + np.asarray(batch["cand_mask"]).sum()
    return float(1 - real / slots)


def batch_keys(padded_keys, packed: bool) -> tuple[str, ...]:
    """The device batch's keys: the padded layout's, or with its token arrays swapped for the packed ones."""
    if not packed:
        return tuple(padded_keys)
    return tuple(k for k in padded_keys if k not in PADDED_TOKENS) + PACKED


def row_length(packing, spec) -> int:
    """`data.packing` -> row length: True means the dataset's longest max length."""
    return max(spec.max_len_query, spec.max_len_passage) if packing is True else int(packing)


class PackingCollator:
    """Wraps a tokenize.Collator: its padded batch, packed. For the Grain batch function (thread-safe: pure)."""

    def __init__(self, collator, row_length: int, row_multiple: int = 1):
        self.collator, self.row_length, self.row_multiple = collator, int(row_length), int(row_multiple)
        spec = getattr(collator, "spec", None)
        if spec is not None and max(spec.max_len_query, spec.max_len_passage) > self.row_length:
            raise UsageError(f"data.packing row length {self.row_length} is shorter than dataset "
                             f"{spec.dataset_id}'s max_len_query {spec.max_len_query} / max_len_passage "
                             f"{spec.max_len_passage}")

    def __call__(self, examples) -> dict[str, np.ndarray]:
        return pack_batch(self.collator(examples), self.row_length, self.row_multiple)


def packed_collator(collator, packing, row_chunks: int = 1) -> PackingCollator:
    """The pipeline's hook: `data.packing` on. Rows are a multiple of the local device count so they shard evenly,
    times `row_chunks` (the GradCache chunks: each chunk of rows then shards evenly too).

    With several processes each host packs its own slice; `global_batch.agree_on_packing` then pads every host
    to the same R and S and moves its segment indices to its rows' place in the global batch.
    """
    import jax  # the device count only; the packing itself is pure NumPy

    return PackingCollator(collator, row_length(packing, collator.spec),
                           row_multiple=jax.local_device_count() * max(1, int(row_chunks)))
