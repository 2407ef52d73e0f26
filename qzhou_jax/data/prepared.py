"""Prepared datasets (written by `data/prepare.py`), read lazily through Grain's ArrayRecord data source.

Layout of one prepared dataset folder DIR/name:
    manifest.json                          written last: counts, task, training fields, skips, fingerprints, lengths
    data-00000-of-00003.array_record ...   one JSON object per sample (the sample dataclass's fields), in order
    labels.npy                             classification only: int32 label id per sample (ids index manifest labels)

`PreparedSamples(folder)` is a read-only sequence: len() comes from the manifest and item i is one random-access
read of record i, so opening a dataset costs the same for 10k and 1M samples and a host only ever reads the
records of its own slice. `BothDirections` and `Subset` are lazy views for what the in-memory path materialises.
Shards hold `group_size` records per chunk (the manifest says how many; 1 in manifests that do not say).

Damage is caught before training: the manifest records each shard's size, record count and digests
(`shard_files`), and opening checks every shard against them (`verify`, config key `data.verify`): "quick" (the
default) compares sizes, record counts (the ArrayRecord index) and a digest of each file's first and last
QUICK_BLOCK bytes; "full" hashes whole files; "off" checks nothing. A record that still cannot be read names its
file and shard. `prepare` run again on the folder verifies in full and rewrites what does not match.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qzhou_jax.data.errors import DataError
from qzhou_jax.data.formats import CLASSIFICATION, SAMPLE_TYPES, PairScoreSample

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
LABELS = "labels.npy"
VERIFY_LEVELS = ("off", "quick", "full")
VERIFY_DEFAULT = "quick"
# Bytes hashed at each end of a shard by the quick check: the end holds the ArrayRecord footer and chunk index,
# the start the first chunks; 128 KiB per shard is ~0.1 ms of reading.
QUICK_BLOCK = 1 << 16
# Dataset fields a prepared dataset hands to the training config as defaults (the config's own entry wins).
TRAINING_FIELDS = ("task", "instruction", "symmetric", "num_negatives", "max_len_query", "max_len_passage",
                   "both_directions")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; prepare the dataset first (python -m qzhou_jax.data.prepare) "
                                f"or let an interrupted prepare finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", f"malformed manifest ({err.msg})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(str(path), f"format_version {manifest.get('format_version')!r}, this code reads "
                                   f"{FORMAT_VERSION}: prepare the dataset again")
    return manifest


def training_defaults(folder: str | Path) -> dict[str, Any]:
    """The dataset fields stored at prepare time (task, instruction, lengths, ...)."""
    spec = read_manifest(folder)["spec"]
    return {k: spec[k] for k in TRAINING_FIELDS if k in spec}


class DamagedShards(DataError):
    """Prepared files that do not match their manifest, or a record that cannot be read; names file and shard."""


def _sha256(path: Path, start: int = 0, length: int | None = None) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest


def quick_sha256(path: Path, size: int, block: int = QUICK_BLOCK) -> str:
    """sha256 of the size and the first and last `block` bytes (the whole file when it is smaller)."""
    digest = hashlib.sha256(str(size).encode())
    digest.update(_sha256(path, 0, block).digest())
    digest.update(_sha256(path, max(size - block, 0), block).digest())
    return digest.hexdigest()


def file_record(path: Path, records: int | None = None) -> dict[str, Any]:
    """What the manifest keeps of one written file (a shard, or labels.npy)."""
    size = path.stat().st_size
    entry = {"name": path.name, "bytes": size, "sha256": _sha256(path).hexdigest(),
             "quick_sha256": quick_sha256(path, size)}
    if records is not None:
        entry["records"] = records
    return entry


def count_records(path: Path) -> int:
    """Records of an ArrayRecord file, from its footer and chunk index (no record is read)."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path))
    try:
        return int(reader.num_records())
    finally:
        reader.close()


def check_file(path: Path, expected: dict[str, Any], level: str = VERIFY_DEFAULT) -> str | None:
    """Why `path` does not match its manifest entry at `level`, or None when it does."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{size} bytes, the manifest says {expected['bytes']}"
    if level == "full":
        if _sha256(path).hexdigest() != expected["sha256"]:
            return "content differs from the manifest's sha256"
    elif quick_sha256(path, size, expected.get("quick_block", QUICK_BLOCK)) != expected["quick_sha256"]:
        return "first/last bytes differ from the manifest's digest"
    if "records" in expected:
        try:
            found = count_records(path)
        except Exception as err:  # noqa: BLE001 - a damaged footer or index: unreadable, say why
            return f"cannot be opened ({type(err).__name__}: {str(err)[:200]})"
        if found != expected["records"]:
            return f"{found} records, the manifest says {expected['records']}"
    return None


def verify_folder(folder: str | Path, manifest: dict[str, Any] | None = None,
                  level: str = VERIFY_DEFAULT) -> list[str]:
    """Problems of a prepared folder's files against its manifest at `level` ([] when all match), each naming
    file and shard. Missing shards are always problems; at "off", or with a manifest written before files were
    recorded, nothing else is checked."""
    if level not in VERIFY_LEVELS:
        raise DataError(str(folder), f"verify level {level!r}: expected one of {VERIFY_LEVELS}")
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    names = manifest["shards"]
    files = manifest.get("shard_files") or []
    if level == "off" or not files:
        return [f"{folder / name} (shard {k + 1} of {len(names)}): missing"
                for k, name in enumerate(names) if not (folder / name).is_file()]
    problems = []
    for k, entry in enumerate(files):
        if problem := check_file(folder / entry["name"], entry, level):
            problems.append(f"{folder / entry['name']} (shard {k + 1} of {len(files)}): {problem}")
    if "labels_file" in manifest:
        if problem := check_file(folder / LABELS, manifest["labels_file"], level):
            problems.append(f"{folder / LABELS}: {problem}")
    return problems


def damaged(folder: Path, problems: list[str], total: int) -> DamagedShards:
    return DamagedShards(str(folder), f"{len(problems)} of {total} prepared file(s) do not match {MANIFEST}: "
                                      f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}. Rerun the "
                                      f"`python -m qzhou_jax.data.prepare` command that wrote it: it verifies "
                                      f"every shard and rewrites the damaged ones")


class _GroupSizeAdvisoryFilter(logging.Filter):
    """Drops Grain's "Grain requires group size 1" error for the shards `prepare` wrote with a larger group on
    purpose (the measured trade-off is at prepare.DEFAULT_GROUP_SIZE), and only for those files: any other
    ArrayRecord file still gets the advice. The choice is logged once per dataset instead."""

    def __init__(self):
        super().__init__()
        self.paths: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if "requires group size 1" not in str(record.msg) or not record.args:
            return True
        return str(record.args[0]) not in self.paths


_ADVISORY = _GroupSizeAdvisoryFilter()
logging.getLogger("absl").addFilter(_ADVISORY)  # Grain logs through absl, whose records go to the "absl" logger


class PreparedSamples(Sequence):
    """Samples of a prepared dataset, decoded on access. `reads` counts records read (tests check laziness)."""

    def __init__(self, folder: str | Path, verify: str = VERIFY_DEFAULT):
        import grain

        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        self.task = self.manifest["spec"]["task"]
        self._type = SAMPLE_TYPES[self.task]
        self._paths = [str(self.folder / name) for name in self.manifest["shards"]]
        if problems := verify_folder(self.folder, self.manifest, verify):  # before any batch touches them
            raise damaged(self.folder, problems, len(self._paths) + ("labels_file" in self.manifest))
        self._len = int(self.manifest["num_samples"])
        counts = self.manifest.get("shard_records")  # absent in manifests written before it was recorded
        self._ends = np.cumsum(counts) if counts is not None else None  # a record's shard, for read errors
        if counts is not None:
            if len(counts) != len(self._paths) or sum(counts) != self._len:
                raise DataError(str(self.folder / MANIFEST), f"shard_records {counts} do not match the "
                                                             f"{len(self._paths)} shards of {self._len} samples")
            # "path[0:n]" read instructions: the source then opens no file until a record of it is read (given
            # bare paths it opens every shard once just to count its records, which made start-up grow with the
            # number of shards).
            self._paths = [f"{path}[0:{n}]" for path, n in zip(self._paths, counts)]
        self.group_size = int(self.manifest.get("group_size", 1))
        self._register_group_size()
        if self.group_size > 1:
            logging.getLogger(__name__).info(
                "%s: shards hold %d records per chunk (faster start-up; Grain's group-size-1 advice does not "
                "apply, see docs/data.md)", self.folder, self.group_size)
        self._source = grain.sources.ArrayRecordDataSource(self._paths)
        if len(self._source) != self._len:
            raise DataError(str(self.folder), f"shards hold {len(self._source)} records, the manifest says {self._len}")
        self._labels = None
        self._lock = threading.Lock()
        self.reads = 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if not -self._len <= index < self._len:
            raise IndexError(f"{self.folder}: sample {index} outside [0, {self._len})")
        index %= self._len
        try:
            record = self._source[index]
            sample = self._type(**json.loads(record))
        except Exception as err:  # noqa: BLE001 - damaged bytes: say which file, whatever the reader raised
            raise self._read_error(index, err) from err
        with self._lock:
            self.reads += 1
        return sample

    def _read_error(self, index: int, err: Exception) -> DamagedShards:
        what = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        if self._ends is None:
            where, record = str(self.folder), f"sample {index}"
        else:
            k = int(np.searchsorted(self._ends, index, side="right"))
            offset = index - (int(self._ends[k - 1]) if k else 0)
            where = str(self.folder / self.manifest["shards"][k])
            record = f"record {offset} of shard {k + 1} of {len(self._ends)} (sample {index})"
        return DamagedShards(where, f"{record} cannot be read ({what}). Rerun the `python -m "
                                    f"qzhou_jax.data.prepare` command that wrote it: it verifies every shard and "
                                    f"rewrites the damaged ones (data.verify='full' checks every byte at start-up)")

    @property
    def labels(self) -> np.ndarray:
        """Classification: the label name of every sample, from labels.npy (no record reads)."""
        if self.task != CLASSIFICATION:
            raise AttributeError("labels exist for classification datasets only")
        if self._labels is None:
            names = np.array(self.manifest["labels"], dtype=object)
            self._labels = names[np.load(self.folder / LABELS)]
        return self._labels

    def __getstate__(self):  # picklable for Grain worker processes
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._register_group_size()  # a Grain worker process has its own logging

    def _register_group_size(self) -> None:
        if self.group_size > 1:
            _ADVISORY.paths.update(str(self.folder / name) for name in self.manifest["shards"])


class Subset(Sequence):
    """base[indices[i]], lazily (max_examples and dropped labels on a prepared dataset)."""

    def __init__(self, base: Sequence, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[int(self.indices[i])]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.base.labels)[self.indices]


class BothDirections(Sequence):
    """Lazy `transforms.both_directions`: item 2k is pair k, item 2k + 1 its (b, a) copy."""

    def __init__(self, base: Sequence[PairScoreSample]):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i):
        s = self.base[i // 2]
        return s if i % 2 == 0 else PairScoreSample(s.text_b, s.text_a, s.score, s.instruction)


def sample_labels(samples: Sequence) -> Sequence[str]:
    """Label names of classification samples, without reading records when the sequence knows them."""
    labels = getattr(samples, "labels", None)
    return labels if labels is not None else [s.label for s in samples]


def encode_sample(sample) -> bytes:
    """JSON (no pickle): the dataclass's fields; `SAMPLE_TYPES[task](**json.loads(record))` restores it.
    (Fields are read directly: dataclasses.asdict deep-copies and costs more than the JSON itself.)"""
    fields = {name: getattr(sample, name) for name in sample.__dataclass_fields__}
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
