"""The data part of a training config (`config.data`, an ml_collections ConfigDict or plain dict), checked.

config.data fields (defaults in brackets; the values live in qzhou_jax/config/defaults.py's DATA table):
  datasets          list of dicts, one per dataset (fields below)
  alpha             sampling exponent: p_i proportional to weight_i * n_i^alpha [0.5]
  eta               stage-2 retrieval share, or None for plain n^alpha sampling [None]
  batch_size        GLOBAL batch size per task type [{"retrieval": 256, "pair_score": 768, "classification": 256}]
  buckets           padded sequence lengths (each side also gets its own max length as last bucket)
                    [(32, 64, 128, 256, 512, 1024, 1536)]
  seed              shuffling, sampling and dataset-choice seed [0]
  skip_invalid      count and skip malformed rows instead of raising [False]
  max_skipped_fraction  with skip_invalid, refuse a dataset whose skipped share of rows exceeds this [0.01]
  prompt_sep        text between "Query:" and the text [" "]
  num_threads       Grain read threads [2];  prefetch_buffer_size  Grain prefetch depth [4]
  packing           0: off; N: pack each batch's texts into rows of N tokens (data/packing.py); True: N = the
                    dataset's longest max_len [0]
  verify            prepared: sources, checked against their manifest at start-up: "quick" (sizes, record counts,
                    digests of each shard's ends), "full" (every byte hashed), "off" ["quick"]
  defaults          dict of dataset fields applied to every dataset unless it sets them [{}]

Dataset dict fields:
  name              unique name (reports, dataset_id order = list order)
  source            "shared:<name>" | "jsonl:<path>" (plain or .gz) | "parquet:<path>" | "hf_disk:<path>" |
                    "tfds:<name>" | "beir:<folder>" | "prepared:<DIR/name>" (data/prepare.py output, read lazily;
                    task, instruction and lengths default to the prepared ones) | "hub:<owner/repo>:<glob>"
                    (Hugging Face dataset files, prepare only); "{data_dir}" in a path expands to the shared data folder
  task              "retrieval" | "pair_score" | "classification" (shared and beir sources know theirs)
  split             split name (shared, hf_disk with a DatasetDict, tfds, beir) [train]
  transform         row adapter (see adapters.py) [retrieval / sts / classification by task]
  fields            adapter field renames, e.g. {"query": "title"} [{}]
  instruction       instruction for format_query; a row's own prompt wins [""]
  symmetric         prompt candidates too [True for pair_score and classification, False for retrieval]
  num_negatives     hard negatives (retrieval) / drawn negatives (classification): C = 1 + num_negatives [4]
  max_len_query, max_len_passage   token limits of anchor / candidates [256, 1536]
  weight            multiplies the dataset's sampling mass [1.0]
  max_examples      keep a seeded random N of the samples read, in file order (demo slices) [None]
  both_directions   pair_score: also emit (b, a, s) [True]
  data_dir          tfds data_dir [None];  label_names  int label id -> name [None]
  max_chars, max_words   truncate title_body bodies / reading-comprehension contexts (also shared:cmrc2018,
                    max_chars only) [None]
  decontaminate     drop samples whose texts match local evaluation tasks ("all" or a comma list; exact after
                    normalisation or a shared 13-gram, qzhou_jax/data/contamination.py); counted as skipped [None]
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.config.defaults import DATA as _DATA_DEFAULTS, plain_default
from qzhou_jax.data.formats import PAIR_SCORE, RETRIEVAL, TASK_TYPES, check_task
from qzhou_jax.data.shared_data import SHARED_DATASETS

SOURCE_KINDS = ("shared", "jsonl", "parquet", "hf_disk", "tfds", "beir", "prepared", "hub")
# One source of truth for the data defaults: qzhou_jax/config/defaults.py's DATA table.
_D = {k: plain_default(v) for k, v in _DATA_DEFAULTS.items()}
DEFAULT_BATCH_SIZE = dict(_D["batch_size"])
DEFAULT_BUCKETS = tuple(_D["buckets"])


def _shared_dir():
    from qzhou_jax.data.shared_data import data_dir

    return data_dir()


def plain(value: Any) -> Any:
    """ConfigDict / FrozenConfigDict / FieldReference -> plain python."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "get") and hasattr(value, "set") and not isinstance(value, Mapping):  # FieldReference
        return value.get()
    return value


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    task: str | None = None
    split: str = "train"
    transform: str | None = None
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    instruction: str = ""
    symmetric: bool | None = None
    num_negatives: int = 4
    max_len_query: int = 256
    max_len_passage: int = 1536
    weight: float = 1.0
    max_examples: int | None = None
    both_directions: bool = True
    data_dir: str | None = None
    label_names: tuple[str, ...] | None = None
    max_chars: int | None = None
    max_words: int | None = None
    decontaminate: str | None = None  # "all" / comma list of local eval tasks: drop samples matching their texts

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def location(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def prompts_candidates(self) -> bool:
        return self.task != RETRIEVAL if self.symmetric is None else bool(self.symmetric)

    @property
    def num_candidates(self) -> int:
        return 1 if self.task == PAIR_SCORE else 1 + self.num_negatives

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str, defaults: Mapping[str, Any] = {}) -> "DatasetSpec":
        raw = plain(raw)
        if str(raw.get("source", "")).startswith("prepared:"):  # stored fields sit between defaults and the entry
            from qzhou_jax.data.prepared import training_defaults

            location = str(raw["source"]).split(":", 1)[1].replace("{data_dir}", str(_shared_dir()))
            raw = {**plain(defaults), **training_defaults(location), **raw}
        else:
            raw = {**plain(defaults), **raw}
        if raw.get("name"):
            where = f"{where} ({raw['name']!r})"
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(raw) - known):
            raise UsageError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        for key in ("name", "source"):
            if not raw.get(key):
                raise UsageError(f"{where}: field {key!r} is missing")
        kind = str(raw["source"]).split(":", 1)[0]
        if ":" not in str(raw["source"]) or kind not in SOURCE_KINDS:
            raise UsageError(f"{where}: source {raw['source']!r} must be '<kind>:<location>' with kind in "
                             f"{SOURCE_KINDS}")
        if kind == "beir":
            raw.setdefault("task", RETRIEVAL)
        if kind == "shared":
            shared = str(raw["source"]).split(":", 1)[1]
            if shared not in SHARED_DATASETS:
                raise UsageError(f"{where}: unknown shared dataset {shared!r}; available: {sorted(SHARED_DATASETS)}")
            if raw.get("task") not in (None, SHARED_DATASETS[shared].task):
                raise UsageError(f"{where}: shared:{shared} is {SHARED_DATASETS[shared].task!r} data, "
                                 f"not {raw['task']!r}")
            raw["task"] = SHARED_DATASETS[shared].task
        if raw.get("task") is not None:
            check_task(raw["task"], where)
        else:
            raise UsageError(f"{where}: field 'task' is missing (one of {TASK_TYPES})")
        if raw.get("label_names") is not None:
            raw["label_names"] = tuple(raw["label_names"])
        raw["fields"] = dict(raw.get("fields") or {})
        spec = cls(**raw)
        for key in ("num_negatives", "max_len_query", "max_len_passage"):
            if not isinstance(getattr(spec, key), int) or getattr(spec, key) < (0 if key == "num_negatives" else 1):
                raise UsageError(f"{where}: field {key!r} = {getattr(spec, key)!r} is invalid")
        if spec.weight <= 0:
            raise UsageError(f"{where}: field 'weight' must be positive")
        return spec


@dataclasses.dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetSpec, ...]
    alpha: float = _D["alpha"]
    eta: float | None = _D["eta"]
    batch_size: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BATCH_SIZE))
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    seed: int = _D["seed"]
    skip_invalid: bool = _D["skip_invalid"]
    max_skipped_fraction: float = _D["max_skipped_fraction"]
    prompt_sep: str = _D["prompt_sep"]
    num_threads: int = _D["num_threads"]
    prefetch_buffer_size: int = _D["prefetch_buffer_size"]
    packing: int | bool = _D["packing"]
    verify: str = _D["verify"]

    @classmethod
    def from_config(cls, data: Any) -> "DataConfig":
        if isinstance(data, DataConfig):
            return data
        raw = dict(plain(data))
        known = {f.name for f in dataclasses.fields(cls)} | {"defaults"}
        if unknown := sorted(set(raw) - known):
            raise UsageError(f"config.data: unknown field(s) {unknown}; known fields: {sorted(known)}")
        defaults = raw.pop("defaults", None) or {}
        datasets = raw.pop("datasets", None)
        if not datasets:
            raise UsageError("config.data.datasets is missing or empty")
        specs = tuple(DatasetSpec.from_dict(d, f"config.data.datasets[{i}]", defaults)
                      for i, d in enumerate(plain(datasets)))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UsageError(f"config.data.datasets: duplicate names in {names}")
        if "batch_size" in raw:
            raw["batch_size"] = {**DEFAULT_BATCH_SIZE, **dict(plain(raw["batch_size"]))}
            if unknown := sorted(set(raw["batch_size"]) - set(TASK_TYPES)):
                raise UsageError(f"config.data.batch_size: unknown task types {unknown}")
        if "buckets" in raw:
            raw["buckets"] = tuple(int(b) for b in plain(raw["buckets"]))
        return cls(datasets=specs, **raw)
