"""Merges the outputs and summaries of `--shard I/N` runs into what one unsharded run writes.

Each shard's rows are in input order and carry `source_index`; a stable sort on it interleaves the shards back
into input order, and the same first-occurrence de-duplication as a single run (run.dedup_rows) drops duplicates
that only meet across shards; near-duplicates (near_dups), which shards leave alone, are dropped here over all
rows. Summaries are summed field by field; every shard 0..N-1 must be present once.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data.sources import read_jsonl
from qzhou_jax.synthesis import near_dups, run as synth_run
from qzhou_jax.synthesis.cache import write_atomic

log = logging.getLogger(__name__)

_SAME = ("generator", "model", "n", "seed", "input", "input_rows")


def _sum(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _sum(a.get(k, 0), b.get(k, 0)) if k in a and k in b else a.get(k, b.get(k))
                for k in {**a, **b}}
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) and bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a


def merge_summaries(summaries: Sequence[dict]) -> dict:
    shards = sorted(synth_run.parse_shard(s["shard"]) for s in summaries)
    count = shards[0][1]
    if [s for s in shards] != [(i, count) for i in range(count)]:
        raise UsageError(f"shards {[f'{i}/{n}' for i, n in shards]} are not exactly 0/{count} .. {count - 1}/{count}")
    for field in _SAME:
        values = {json.dumps(s.get(field)) for s in summaries}
        if len(values) > 1:
            raise UsageError(f"shard summaries disagree on {field!r}: {sorted(values)}")
    merged = summaries[0]
    for s in summaries[1:]:
        merged = {k: (merged[k] if k in _SAME else _sum(merged.get(k), s.get(k))) for k in merged}
    merged["max_in_flight"] = max(s.get("max_in_flight", 0) for s in summaries)
    merged["elapsed_s"] = max(s.get("elapsed_s", 0) for s in summaries)
    merged["shard"] = f"merged {count}"
    merged["stopped"] = "; ".join(s["stopped"] for s in summaries if s.get("stopped")) or None
    return merged


def merge(shard_outputs: Sequence[str], output: str, summary: str | None = None) -> dict:
    rows = []
    summaries = []
    for path in shard_outputs:
        rows.extend(row.fields for row in read_jsonl(path))
        summary_path = Path(synth_run.default_paths(path)[1])
        if not summary_path.exists():
            raise FileNotFoundError(f"{summary_path}: summary of shard output {path} not found")
        summaries.append(json.loads(summary_path.read_text()))
    for i, row in enumerate(rows):
        if not isinstance(row.get("source_index"), int):
            raise UsageError(f"row {i} of the shard outputs has no integer 'source_index'")
    rows.sort(key=lambda r: r["source_index"])  # stable: rows of one item keep their order
    rows, duplicates = synth_run.dedup_rows(rows)
    rows, near = near_dups.drop_near_duplicates(rows)
    merged = merge_summaries(summaries)
    merged["duplicates_dropped"] = merged.get("duplicates_dropped", 0) + duplicates
    merged["near_duplicates_dropped"] = near
    merged["rows_written"] = len(rows)
    merged["output"] = output
    synth_run.write_rows(output, rows)
    write_atomic(summary or synth_run.default_paths(output)[1], json.dumps(merged, indent=2, ensure_ascii=False)
                 + "\n")
    if not merged.get("complete"):
        log.warning("at least one shard is partial: rerun it, then merge again")
    return merged
