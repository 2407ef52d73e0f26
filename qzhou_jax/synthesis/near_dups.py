"""Near-duplicate rows across a whole synthesis output: a row whose query AND first positive are each a
near-duplicate (checks.near_duplicate: equal after normalisation, or token edit ratio <= 0.10) of an earlier kept
row's is dropped; the first occurrence in row order wins, as for exact duplicates (run.dedup_rows).

Comparing every pair is quadratic, so candidates come from MinHash LSH: datasketch's MinHash of the row's token
bigrams (query and positive together), cut into BANDS bands of ROWS_PER_BAND values; rows that agree on a whole
band are candidates, and each candidate is confirmed with the exact test above. Two rows at the limit (10% of
the tokens of both texts edited) share about 0.64 of their bigrams and become candidates with probability
1 - (1 - 0.64^4)^32 = 0.997; closer ones almost surely. Unrelated rows rarely agree on a band (their Jaccard is near
0), so confirmations stay few. The bands are matched with numpy (np.unique per band) rather than datasketch's
MinHashLSH, whose Python sets cost ~250 bytes per row and band (8 GB for 1M rows); here it is 16 bytes.

Deterministic (fixed MinHash seed, row order), so a resumed run and a merge of shards give the same rows. A sharded
run (`--shard I/N`, N > 1) leaves this to `merge`: near-duplicates are not transitive, so dropping them per shard
and again after merging could keep a different set than one unsharded run.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from datasketch import MinHash

from qzhou_jax.synthesis import checks

BANDS, ROWS_PER_BAND = 32, 4
NUM_PERM = BANDS * ROWS_PER_BAND
SEED = 1
PROGRESS_EVERY = 100_000  # rows between progress lines (~4,500 rows/s on one core)

log = logging.getLogger(__name__)


def shingles(row: dict) -> list[bytes]:
    """Token bigrams of the query and of the first positive (a lone token counts as one)."""
    out = []
    for field, text in (("q", row["query"]), ("p", row["pos"][0])):
        toks = checks.tokens(text)
        grams = zip(toks, toks[1:]) if len(toks) > 1 else ((t, "") for t in toks)
        out.extend(f"{field}\x1f{a}\x1f{b}".encode() for a, b in grams)
    return out or [b""]


def signatures(rows: Sequence[dict]) -> np.ndarray:
    """[rows, NUM_PERM] MinHash values."""
    if not rows:
        return np.zeros((0, NUM_PERM), np.uint64)
    out, start = [], time.time()
    for i, m in enumerate(MinHash.generator((shingles(r) for r in rows), num_perm=NUM_PERM, seed=SEED), 1):
        out.append(m.hashvalues)
        if i % PROGRESS_EVERY == 0:
            rate = i / max(time.time() - start, 1e-9)
            log.info("near-duplicates: %d/%d rows signed, %.0f rows/s, ETA %.0fs", i, len(rows), rate,
                     (len(rows) - i) / rate)
    return np.stack(out)


def candidate_pairs(sig: np.ndarray) -> dict[int, set[int]]:
    """{j: earlier rows i that agree with row j on at least one whole band}."""
    earlier: dict[int, set[int]] = {}
    for b in range(BANDS):
        band = np.ascontiguousarray(sig[:, b * ROWS_PER_BAND:(b + 1) * ROWS_PER_BAND])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * ROWS_PER_BAND))).ravel()
        _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = counts[group] > 1
        if not shared.any():
            continue
        members = np.flatnonzero(shared)
        order = members[np.argsort(group[members], kind="stable")]  # grouped, each group in row order
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for run in np.split(order, bounds):
            for k in range(1, len(run)):
                earlier.setdefault(int(run[k]), set()).update(int(i) for i in run[:k])
    return earlier


def is_near_duplicate(a: dict, b: dict) -> bool:
    return checks.near_duplicate(a["query"], b["query"]) and checks.near_duplicate(a["pos"][0], b["pos"][0])


def drop_near_duplicates(rows: Sequence[dict]) -> tuple[list[dict], int]:
    """(rows without near-duplicates of earlier kept rows, how many were dropped)."""
    earlier = candidate_pairs(signatures(rows))
    kept = np.ones(len(rows), bool)
    for j in sorted(earlier):
        if any(kept[i] and is_near_duplicate(rows[i], rows[j]) for i in sorted(earlier[j])):
            kept[j] = False
    return [r for r, k in zip(rows, kept) if k], int((~kept).sum())
