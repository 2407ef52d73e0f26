"""Prepare once, read lazily: every dataset of a data config -> transformed, validated samples in ArrayRecord shards.

    python -m qzhou_jax.data.prepare --config configs/stage1.py:paper --out /data/prepared [--shard I/N]
        [--workers P] [--records-per-shard 100000] [--group-size 8]

Per dataset, OUT/<name>/ receives `data-KKKKK-of-NNNNN.array_record` shards (one JSON sample per record, in source
order, after the dataset's transform, validation, max_examples and label checks; both_directions is applied at
read time so n_i stays the dataset's own pair count), `labels.npy` for classification, and `manifest.json` --
written last -- with counts, task, the dataset's fields, skipped rows by reason, source fingerprints and length
statistics. OUT/manifest.json indexes the datasets once all of them are done. Train from them with
`source="prepared:OUT/<name>"` (configs/paper_mix.py does this for the paper's mix).

Parallel and resumable: datasets run in `--workers` processes, and `--shard I/N` takes datasets I, I+N, ...
(one host each, same OUT on shared storage). Each shard file is written to a temporary name, fsynced and renamed,
so a crash (kill -9) leaves only whole shards; a rerun checks that the samples are the same (`plan.json` holds
their fingerprint), writes the missing shards and the manifest, and verifies finished datasets in full against
their manifest (size, records, sha256 of every file), rewriting any file that does not match. Shards are a pure
function of the samples, so an interrupted-then-resumed (or repaired) run gives the same files as an
uninterrupted one. With data.skip_invalid, a dataset whose malformed rows exceed data.max_skipped_fraction is
refused here as in training; the manifest records the counts, which training reports and checks again.
`hub:` sources download into the Hugging Face cache first (huggingface_hub).
"""
from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qzhou_jax import atomic
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data import hub, prepared
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.formats import CLASSIFICATION, PAIR_SCORE, RETRIEVAL
from qzhou_jax.data.spec import DataConfig, DatasetSpec

DEFAULT_RECORDS_PER_SHARD = 100_000
# Records per ArrayRecord chunk. Grain asks for 1 (it logs an error for other sizes; `prepared` silences that for
# its own shards) because a random read decodes its whole chunk. But the chunk index, read when a shard is first
# opened (for every shard the first batch touches), has one entry per chunk: at 8, start-up stays flat from 10k
# to 1M samples (it grew 3.3x at 1) for ~20 us more per stage-1-sized read. Figures per group size: docs/data.md.
DEFAULT_GROUP_SIZE = 8
PLAN = "plan.json"


def write_json_atomic(path: Path, value: Any) -> None:
    atomic.write_json(path, value)


_fsync_dir = atomic.fsync_dir


def file_fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def source_fingerprints(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Size and sha256 of every input file (shared data: its folder is recorded, the samples hash covers it)."""
    from qzhou_jax.data.pipeline import expand_data_dir
    from qzhou_jax.data.shared_data import data_dir

    if spec.kind == "shared":
        return [{"shared": spec.location, "split": spec.split, "data_dir": str(data_dir())}]
    if spec.kind == "tfds":
        return [{"tfds": spec.location, "split": spec.split, "data_dir": spec.data_dir}]
    if spec.kind == "hub":
        repo, _ = hub.parse(spec.location)
        return [{"hub": repo, "file": name, **file_fingerprint(path)}
                for name, path in zip(hub.matching_files(spec.location), hub.local_files(spec.location))]
    path = Path(expand_data_dir(spec.location))
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [file_fingerprint(p) for p in files]


def _quantiles(values: Sequence[int]) -> dict[str, float]:
    if not len(values):
        return {}
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 1), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def length_statistics(task: str, samples: Sequence) -> dict[str, Any]:
    """Characters per text field (token lengths depend on the tokenizer: see data.inspect)."""
    if task == RETRIEVAL:
        fields = {"query_chars": [len(s.query) for s in samples], "positive_chars": [len(s.positive) for s in samples],
                  "negative_chars": [len(n) for s in samples for n in s.negatives],
                  "negatives_per_sample": [len(s.negatives) for s in samples]}
    elif task == PAIR_SCORE:
        fields = {"text_a_chars": [len(s.text_a) for s in samples], "text_b_chars": [len(s.text_b) for s in samples]}
    else:
        fields = {"text_chars": [len(s.text) for s in samples]}
    return {k: _quantiles(v) for k, v in fields.items()}


def shard_names(num_samples: int, records_per_shard: int) -> list[str]:
    n = max(1, math.ceil(num_samples / records_per_shard))
    return [f"data-{k:05d}-of-{n:05d}.array_record" for k in range(n)]


def _write_shard(path: Path, records: Sequence[bytes], group_size: int = DEFAULT_GROUP_SIZE) -> None:
    """Whole shard or nothing: temporary name, fsync, rename."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(f".{path.name}.tmp")
    writer = ArrayRecordWriter(str(tmp), f"group_size:{group_size}")
    for record in records:
        writer.write(record)
    writer.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_labels(path: Path, samples: Sequence) -> list[str]:
    """labels.npy (int32 id per sample, ids index the sorted label names), whole or nothing; returns the names."""
    labels = sorted({s.label for s in samples})
    ids = {label: i for i, label in enumerate(labels)}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.array([ids[s.label] for s in samples], dtype=np.int32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return labels


def prepare_dataset(spec: DatasetSpec, out: Path, *, seed: int = 0, skip_invalid: bool = False,
                    max_skipped_fraction: float = 1.0,
                    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD, group_size: int = DEFAULT_GROUP_SIZE,
                    log: Callable[[str], None] = print, evaluation_texts=None) -> dict[str, Any]:
    """One dataset -> OUT/<name>/ (see module docstring). Returns its manifest. Malformed rows beyond
    `max_skipped_fraction` (data.max_skipped_fraction) refuse the dataset, as training would (checks.py).
    `evaluation_texts`: for a dataset with `decontaminate` (pipeline.load_samples)."""
    if group_size < 1:
        raise UsageError(f"group_size {group_size}: need >= 1 records per ArrayRecord chunk")
    from qzhou_jax.data.pipeline import load_samples

    folder = out / spec.name
    t0 = time.time()
    counter = SkipCounter(skip_invalid=skip_invalid, max_skipped_fraction=max_skipped_fraction)
    samples = load_samples(dataclasses.replace(spec, both_directions=False), counter, seed,
                           evaluation_texts=evaluation_texts)
    records = [prepared.encode_sample(s) for s in samples]
    digest = hashlib.sha256()
    for r in records:
        digest.update(len(r).to_bytes(8, "little") + r)
    fingerprint = digest.hexdigest()
    names = shard_names(len(records), records_per_shard)

    def shard(k: int) -> list[bytes]:
        return records[k * records_per_shard:(k + 1) * records_per_shard]

    folder.mkdir(parents=True, exist_ok=True)
    plan = {"samples_sha256": fingerprint, "num_samples": len(records), "shards": names, "group_size": group_size}
    for existing in (folder / prepared.MANIFEST, folder / PLAN):
        if existing.is_file():
            old = json.loads(existing.read_text(encoding="utf-8"))
            old_fp = old.get("samples_sha256")
            old_group = old.get("group_size", 1)  # written before group_size was recorded: 1
            if old_fp != fingerprint or old.get("shards") != names or old_group != group_size:
                raise UsageError(f"{folder}: already holds a prepared {spec.name!r} made from other samples "
                                 f"(sha256 {str(old_fp)[:12]} vs {fingerprint[:12]}), another shard size or "
                                 f"another group size ({old_group} vs {group_size}); "
                                 f"remove the folder to prepare it again")
    if (folder / prepared.MANIFEST).is_file():
        return _verify_and_repair(spec, folder, samples, names, shard, group_size, log)
    write_json_atomic(folder / PLAN, plan)

    written = 0
    for k, name in enumerate(names):
        if (folder / name).is_file():
            continue  # a finished shard of an interrupted run: same samples, so same bytes
        _write_shard(folder / name, shard(k), group_size)
        written += 1
        if written % 10 == 0 or k == len(names) - 1:
            elapsed = max(time.time() - t0, 1e-9)
            log(f"{spec.name}: shard {k + 1}/{len(names)}, {elapsed:.0f}s, "
                f"ETA {elapsed / (k + 1) * (len(names) - k - 1):.0f}s")
    manifest: dict[str, Any] = {
        "format_version": prepared.FORMAT_VERSION, "name": spec.name, "num_samples": len(records),
        "task": spec.task, "shards": names, "group_size": group_size,
        "shard_records": [len(shard(k)) for k in range(len(names))],
        # size, records and digests per shard: checked when training opens the folder (prepared.verify_folder)
        "shard_files": [prepared.file_record(folder / name, len(shard(k))) for k, name in enumerate(names)],
        "samples_sha256": fingerprint,
        "spec": {k: v for k, v in dataclasses.asdict(spec).items()},
        "skipped": dict(counter.counts.get(spec.name, {})), "skipped_examples": counter.examples.get(spec.name, []),
        # malformed rows among the rows read: training applies its own data.max_skipped_fraction to them
        "malformed_rows": int(counter.invalid_counts.get(spec.name, 0)),
        "samples_read": counter.samples_read.get(spec.name, len(records)),
        "sources": source_fingerprints(spec), "lengths": length_statistics(spec.task, samples),
        "seconds": round(time.time() - t0, 2),
    }
    if spec.task == CLASSIFICATION:
        manifest["labels"] = _write_labels(folder / prepared.LABELS, samples)
        manifest["labels_file"] = prepared.file_record(folder / prepared.LABELS)
    write_json_atomic(folder / prepared.MANIFEST, manifest)
    _fsync_dir(folder)
    log(f"{spec.name}: {len(records)} samples in {len(names)} shards, {counter.total(spec.name)} rows skipped, "
        f"{len(records) / max(time.time() - t0, 1e-9):.0f} samples/s")
    return manifest


def _verify_and_repair(spec: DatasetSpec, folder: Path, samples: Sequence, names: list[str],
                       shard: Callable[[int], list[bytes]], group_size: int,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """A finished dataset prepared again: every file checked in full against the manifest; what does not match
    (or is missing) is rewritten from the samples, which equal the manifest's (samples_sha256), so the rewritten
    files equal the originals. A manifest from before file digests: each shard is rebuilt and compared byte for
    byte, and the manifest gains the digests."""
    manifest = prepared.read_manifest(folder)
    labels_path = folder / prepared.LABELS
    if manifest.get("shard_files"):
        expected = {entry["name"]: entry for entry in manifest["shard_files"]}
        bad = [k for k, name in enumerate(names) if prepared.check_file(folder / name, expected[name], "full")]
        bad_labels = "labels_file" in manifest and bool(prepared.check_file(labels_path, manifest["labels_file"],
                                                                            "full"))
        for k in bad:
            _write_shard(folder / names[k], shard(k), group_size)
        if bad_labels:
            _write_labels(labels_path, samples)
        upgraded = False
    else:
        bad = []
        for k, name in enumerate(names):
            fresh = folder / f".{name}.verify"
            _write_shard(fresh, shard(k), group_size)
            if (folder / name).is_file() and filecmp.cmp(fresh, folder / name, shallow=False):
                fresh.unlink()
            else:
                os.replace(fresh, folder / name)
                bad.append(k)
        bad_labels = False
        if spec.task == CLASSIFICATION:
            before = labels_path.read_bytes() if labels_path.is_file() else None
            _write_labels(labels_path, samples)
            bad_labels = before != labels_path.read_bytes()
        upgraded = True
    if upgraded or bad:
        manifest["shard_files"] = [prepared.file_record(folder / name, len(shard(k))) for k, name in enumerate(names)]
        manifest.setdefault("shard_records", [entry["records"] for entry in manifest["shard_files"]])
    if spec.task == CLASSIFICATION and (upgraded or bad_labels):
        manifest["labels_file"] = prepared.file_record(labels_path)
    if upgraded or bad or bad_labels:
        write_json_atomic(folder / prepared.MANIFEST, manifest)
        _fsync_dir(folder)
    repaired = [names[k] for k in bad] + ([prepared.LABELS] if bad_labels else [])
    if repaired:
        log(f"{spec.name}: {len(repaired)} of {len(names) + (spec.task == CLASSIFICATION)} files did not match "
            f"the manifest and were rewritten: {', '.join(repaired[:5])}{' ...' if len(repaired) > 5 else ''}")
    else:
        log(f"{spec.name}: already prepared ({len(samples)} samples, {len(names)} shards verified), skipped")
    return manifest


def _prepare_one(args, log: Callable[[str], None] = print) -> dict[str, Any]:  # module-level: runs in workers
    spec_fields, out, seed, skip_invalid, max_skipped_fraction, records_per_shard, group_size, texts = args
    return prepare_dataset(DatasetSpec(**spec_fields), Path(out), seed=seed, skip_invalid=skip_invalid,
                           max_skipped_fraction=max_skipped_fraction, records_per_shard=records_per_shard,
                           group_size=group_size, log=log, evaluation_texts=texts)


def prepare(data_config, out: str | Path, *, shard: tuple[int, int] = (0, 1), workers: int = 1,
            records_per_shard: int = DEFAULT_RECORDS_PER_SHARD, group_size: int = DEFAULT_GROUP_SIZE,
            log: Callable[[str], None] = print, evaluation_texts=None) -> dict:
    """Prepares this shard's datasets; returns {name: manifest} of those, and writes OUT/manifest.json once every
    dataset of the config is done. `evaluation_texts` (a module-level function, so workers can take it): for
    datasets with `decontaminate`."""
    config = DataConfig.from_config(data_config)
    index, count = shard
    if not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: need 0 <= I < N")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = [s for i, s in enumerate(config.datasets) if i % count == index]
    jobs = [(dataclasses.asdict(s), str(out), config.seed, config.skip_invalid, config.max_skipped_fraction,
             records_per_shard, group_size, evaluation_texts) for s in mine]
    t0 = time.time()
    if workers > 1 and len(jobs) > 1:
        # spawn: a clean interpreter per worker (no forked threads or locks)
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = {}
            for i, manifest in enumerate(pool.map(_prepare_one, jobs)):
                results[manifest["name"]] = manifest
                log(f"[{i + 1}/{len(jobs)} datasets] {manifest['name']} done ({time.time() - t0:.0f}s)")
    else:
        results = {}
        for i, job in enumerate(jobs):
            manifest = _prepare_one(job, log)
            results[manifest["name"]] = manifest
            log(f"[{i + 1}/{len(jobs)} datasets] {manifest['name']} done ({time.time() - t0:.0f}s)")
    folders = [out / s.name for s in config.datasets]
    if all((f / prepared.MANIFEST).is_file() for f in folders):
        index_manifest = {"format_version": prepared.FORMAT_VERSION, "datasets": {}}
        for f in folders:
            m = prepared.read_manifest(f)
            index_manifest["datasets"][m["name"]] = {k: m[k] for k in ("task", "num_samples", "samples_sha256")}
            index_manifest["datasets"][m["name"]]["skipped"] = sum(m["skipped"].values())
        write_json_atomic(out / prepared.MANIFEST, index_manifest)
    return results


if __name__ == "__main__":  # `python -m qzhou_jax.data.prepare`: the command is qzhou_jax/cli/prepare.py
    from qzhou_jax.cli.prepare import main

    main()
