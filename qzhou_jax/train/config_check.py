"""A training config checked before anything loads or compiles: one `ConfigError` line naming the field.

    config_check.check(cfg, device_count=jax.device_count(), process_count=jax.process_count())

`check` covers every stage of a multi-stage config up front (a stage-2 mistake is reported before stage 1
trains). `resume_changes` / `check_resume` compare the config a checkpoint was saved with to the current one:
every changed key is listed; a change of the saved state's structure (model shape, optimizer structure) refuses
to resume, naming the changed keys; a changed mesh or host count resumes (Orbax reshards, the data iterator
position is global).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.config.defaults import REQUIRED


class ConfigError(UsageError):
    """A config mistake; `str(err)` is one line: "config.train.steps = 0: must be a positive integer"."""

    def __init__(self, field: str, value: Any, message: str):
        super().__init__(f"config.{field} = {value!r}: {message}")
        self.field = field


def _positive_int(cfg, field: str, prefix: str, minimum: int = 1) -> None:
    value = _get(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(prefix + field, value, f"must be an integer >= {minimum}")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def resolve_mesh_shape(shape, device_count: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError("mesh.shape", shape, "must be 3 positive sizes (data, fsdp, tensor), at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if device_count % known:
            raise ConfigError("mesh.shape", shape, f"{device_count} devices do not divide into {known} x (the rest)")
        shape = tuple(device_count // known if s == -1 else s for s in shape)
    if math.prod(shape) != device_count:
        raise ConfigError("mesh.shape", shape, f"needs {math.prod(shape)} devices, there are {device_count}")
    return shape


def check(cfg, *, device_count: int, process_count: int = 1) -> None:
    """Raises ConfigError for the first mistake found in `cfg` (every stage of a multi-stage config)."""
    if cfg.get("stages"):
        names = list(cfg.stages)
        for i, (name, stage) in enumerate(cfg.stages.items()):
            if stage.get("merge") and stage.merge.enabled:
                _check_merge(stage, f"stages.{name}.", names[:i], process_count)
                continue
            _check_stage(stage, device_count, process_count, prefix=f"stages.{name}.", first=name ==
                         next(iter(cfg.stages)))
        return
    if cfg.get("merge") and cfg.merge.enabled:
        raise ConfigError("merge.enabled", True, "a merge is a stage of a multi-stage config (stages.NAME.merge); "
                          "to merge finished runs use python -m qzhou_jax.merge")
    _check_stage(cfg, device_count, process_count, prefix="", first=True)


# Values a key takes, where no module owns a list of them (model/config.py's lists are imported below).
DTYPES = ("float32", "bfloat16", "float16")
DECAYS = ("linear", "cosine", "constant")  # optim.learning_rate_schedule
EXPORT_DTYPES = ("bfloat16", "float32")    # hf/export.EXPORT_DTYPES (tests/train/test_config_check.py keeps them equal)


def _choice(cfg, field: str, prefix: str, allowed) -> None:
    value = _get(cfg, field)
    if value not in allowed:
        raise ConfigError(prefix + field, value, f"must be one of {', '.join(map(str, allowed))}")


def _number(cfg, field: str, prefix: str, low: float, high: float = math.inf, *, open_low: bool = False,
            open_high: bool = False) -> None:
    value = _get(cfg, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        low < value if open_low else low <= value) and (value < high if open_high else value <= high)
    if not ok:
        span = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ConfigError(prefix + field, value, f"must be a number in {span}")


def _check_values(cfg, prefix: str) -> None:
    """Enumerations, dtypes and ranges: what would otherwise fail after the data loaded, or deep in a trace."""
    from qzhou_jax.data.prepared import VERIFY_LEVELS
    from qzhou_jax.model.config import ATTENTION_IMPLS, ATTENTION_MODES, POOLING_MODES, PRESETS, REMAT_POLICIES

    for field, allowed in (("model.dtype", DTYPES), ("model.param_dtype", DTYPES),
                           ("model.attention", ATTENTION_MODES), ("model.pooling", POOLING_MODES),
                           ("model.remat_policy", REMAT_POLICIES), ("model.attention_impl", ATTENTION_IMPLS),
                           ("optim.decay", DECAYS), ("export.dtype", EXPORT_DTYPES),
                           ("data.verify", VERIFY_LEVELS)):
        if _has(cfg, field):
            _choice(cfg, field, prefix, allowed)
    if not cfg.model.get("hf_dir"):
        _choice(cfg, "model.preset", prefix, sorted(PRESETS))
    for field, low, high, kw in (("optim.final_lr_ratio", 0, 1, {}), ("optim.weight_decay", 0, math.inf, {}),
                                 ("optim.grad_clip", 0, math.inf, {}), ("optim.b1", 0, 1, {"open_high": True}),
                                 ("optim.b2", 0, 1, {"open_high": True}), ("optim.eps", 0, math.inf,
                                                                           {"open_low": True})):
        if _has(cfg, field):
            _number(cfg, field, prefix, low, high, **kw)
    if cfg.get("eval") and cfg.eval.get("tasks"):
        from qzhou_jax.eval.tasks import TASKS

        unknown = [t for t in cfg.eval.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(prefix + "eval.tasks", tuple(cfg.eval.tasks), f"unknown task(s) {unknown}; local "
                              f"tasks: {', '.join(TASKS)}")
    if cfg.get("mine") and (cfg.mine.get("enabled") or cfg.mine.get("every")):  # between stages, or during one
        _choice(cfg, "mine.rule", prefix, ("none", "relative_margin", "max_score_ratio"))  # mining/stages.RULES


def _has(cfg, dotted: str) -> bool:
    try:
        _get(cfg, dotted)
    except (KeyError, AttributeError):
        return False
    return True


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _check_paths(cfg, prefix: str, first: bool) -> None:
    """Every path the config names exists and is the right kind of thing (read before any compile)."""
    from qzhou_jax.run import checkpoint

    hf_dir = cfg.model.get("hf_dir")
    if hf_dir and not _is_model_dir(hf_dir):
        raise ConfigError(prefix + "model.hf_dir", hf_dir, "not an HF model directory (no config.json there)"
                          if os.path.isdir(hf_dir) else "no such directory")
    tokenizer = cfg.model.get("tokenizer")
    if tokenizer and not os.path.isdir(tokenizer):
        raise ConfigError(prefix + "model.tokenizer", tokenizer, "no such directory")
    source = cfg.get("init_from") or ""
    # Later stages' init_from may name what an earlier stage of this run writes: checked when they start.
    if first and source not in ("", "base", REQUIRED) and not (checkpoint.is_workdir(source) or
                                                              _is_model_dir(source)):
        raise ConfigError(prefix + "init_from", source, "neither a training workdir (no checkpoints/ there) nor an "
                          "HF model directory (no config.json)" if os.path.isdir(source) else "no such directory")
    # What mines this stage's negatives (mining/stages.mining_model): without this check a wrong path would
    # surface only when the stage's mining starts, after the stages before it have trained.
    miner = (cfg.mine.get("model") or "") if cfg.get("mine") and cfg.mine.get("enabled") else ""
    if miner == "base" and not hf_dir:
        raise ConfigError(prefix + "mine.model", miner, "'base' mines with model.hf_dir, which is not set")
    if miner not in ("", "base") and not (checkpoint.is_workdir(miner) or _is_model_dir(miner)):
        raise ConfigError(prefix + "mine.model", miner, "neither a training workdir (no checkpoints/ there) nor an "
                          "HF model directory (no config.json)" if os.path.isdir(miner) else "no such directory")
    _check_sources(cfg, prefix)


def _check_sources(cfg, prefix: str) -> None:
    from qzhou_jax.data.shared_data import SHARED_DATASETS, data_dir
    from qzhou_jax.data.spec import plain

    defaults = plain(cfg.data.get("defaults") or {})
    for i, raw in enumerate(plain(cfg.data.get("datasets") or [])):
        source = str(raw.get("source", "")) if isinstance(raw, Mapping) else ""
        kind, _, location = source.partition(":")
        field = f"{prefix}data.datasets[{i}].source"
        path = location.replace("{data_dir}", str(data_dir()))
        if kind in ("jsonl", "parquet") and not os.path.isfile(path):
            raise ConfigError(field, source, "no such file")
        if kind in ("hf_disk", "beir") and not os.path.isdir(path):
            raise ConfigError(field, source, "no such directory")
        if kind == "prepared" and not os.path.isfile(os.path.join(path, "manifest.json")):
            raise ConfigError(field, source, "no manifest.json there: prepare it first (python -m "
                              "qzhou_jax.data.prepare), or let an interrupted prepare finish")
        if kind == "shared" and location in SHARED_DATASETS:
            split = {**defaults, **raw}.get("split", "train")
            if split not in SHARED_DATASETS[location].splits:
                raise ConfigError(f"{prefix}data.datasets[{i}].split", split, f"shared:{location} has splits "
                                  f"{', '.join(SHARED_DATASETS[location].splits)}")
            if not data_dir().is_dir():
                raise ConfigError(field, source, f"the shared data folder {data_dir()} does not exist (set "
                                  f"QZHOU_DATA_DIR)")


def _check_stage(cfg, device_count: int, process_count: int, prefix: str, first: bool) -> None:
    from qzhou_jax import losses, sharding
    from qzhou_jax.data.spec import DataConfig

    _check_values(cfg, prefix)

    for field in ("train.steps", "train.log_every", "checkpoint.every", "checkpoint.keep", "optim.grad_accum_steps",
                  "train.max_consecutive_nonfinite", "train.stall_steps"):
        _positive_int(cfg, field, prefix)
    _positive_int(cfg, "optim.warmup_steps", prefix, minimum=0)
    _positive_int(cfg, "train.gradcache_chunks", prefix, minimum=0)
    for field in ("optim.lr",):
        value = _get(cfg, field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(prefix + field, value, "must be a positive number")
    k = cfg.optim.grad_accum_steps
    if cfg.train.steps % k:
        raise ConfigError(prefix + "train.steps", cfg.train.steps, f"must be a multiple of optim.grad_accum_steps "
                          f"({k}): the schedule counts optimizer updates, train.steps counts micro-batches")
    if cfg.get("init_from") == REQUIRED and first:
        raise ConfigError(prefix + "init_from", REQUIRED, "this stage starts from a previous stage: set it to the "
                          "stage-1 workdir (or an HF dir), or to 'base' to start from model.hf_dir on purpose")
    evaluates = bool(cfg.get("eval") and cfg.eval.get("tasks"))
    if evaluates:
        _positive_int(cfg, "eval.every", prefix)
    if cfg.checkpoint.keep_best:
        if not cfg.checkpoint.best_metric or not evaluates:
            raise ConfigError(prefix + "checkpoint.best_metric", cfg.checkpoint.best_metric,
                              "checkpoint.keep_best needs a best_metric and eval.tasks")
        if cfg.eval.every % cfg.checkpoint.every:
            # The metric reaches Orbax only with a save at an evaluated step; otherwise "best" is never scored.
            raise ConfigError(prefix + "eval.every", cfg.eval.every, f"must be a multiple of checkpoint.every "
                              f"({cfg.checkpoint.every}) with checkpoint.keep_best")
    _check_model(cfg, prefix)
    try:
        losses.loss_config_from(cfg.loss.to_dict() if hasattr(cfg.loss, "to_dict") else cfg.loss)
    except ValueError as e:
        raise ConfigError(prefix + "loss", "...", str(e)) from None
    _check_paths(cfg, prefix, first)
    try:
        data = DataConfig.from_config(cfg.data)
    except (ValueError, OSError) as e:
        raise ConfigError(prefix + "data", "...", str(e)) from None
    if not 0 <= data.max_skipped_fraction <= 1:
        raise ConfigError(prefix + "data.max_skipped_fraction", data.max_skipped_fraction, "must be within [0, 1]")
    if data.eta is not None and not 0 < data.eta < 1:
        raise ConfigError(prefix + "data.eta", data.eta, "must be within (0, 1), or None")
    mesh = dict(zip(sharding.MESH_AXES, resolve_mesh_shape(cfg.mesh.shape, device_count)))
    batch_devices = math.prod(mesh[a] for a in sharding.BATCH_AXES)
    for task in sorted({spec.task for spec in data.datasets}):
        size = data.batch_size.get(task)
        field = f"{prefix}data.batch_size.{task}"
        if not isinstance(size, int) or size < 1:
            raise ConfigError(field, size, "must be a positive integer")
        if size % batch_devices:
            raise ConfigError(field, size, f"the global batch must be divisible by the {batch_devices} "
                              f"batch-sharding devices (mesh data x fsdp = {mesh['data']} x {mesh['fsdp']})")
        if size % process_count:
            raise ConfigError(field, size, f"the global batch must be divisible by the {process_count} hosts")
        chunks = cfg.train.gradcache_chunks
        if chunks > 1 and size % chunks:
            raise ConfigError(prefix + "train.gradcache_chunks", chunks, f"must divide data.batch_size.{task} "
                              f"({size})")
    _check_refresh(cfg, prefix, process_count)


def _check_model(cfg, prefix: str) -> None:
    """model.trainable's form and model.lora (the layer count is checked once the model config is known)."""
    from qzhou_jax.model.config import LORA_TARGETS

    trainable = cfg.model.get("trainable", "all")
    kind, _, count = str(trainable).partition(":")
    if trainable not in ("all", "layers") and not (kind == "top" and count.isdigit() and int(count) >= 1):
        raise ConfigError(prefix + "model.trainable", trainable, "must be 'all', 'layers' (embedding frozen) or "
                          "'top:N' (the top N layers and the final norm train)")
    lora = cfg.model.get("lora")
    if not lora:
        return
    _positive_int(cfg, "model.lora.rank", prefix, minimum=0)
    if not lora.rank:
        return
    if trainable != "all":
        raise ConfigError(prefix + "model.trainable", trainable, "LoRA (model.lora.rank > 0) freezes the whole base "
                          "already: leave model.trainable at 'all'")
    if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or not lora.alpha > 0:
        raise ConfigError(prefix + "model.lora.alpha", lora.alpha, "must be a positive number (scaling alpha / rank)")
    if isinstance(lora.dropout, bool) or not isinstance(lora.dropout, (int, float)) or not 0 <= lora.dropout < 1:
        raise ConfigError(prefix + "model.lora.dropout", lora.dropout, "must be within [0, 1)")
    targets = tuple(lora.targets)
    if not targets or not set(targets) <= set(LORA_TARGETS):
        raise ConfigError(prefix + "model.lora.targets", targets, f"must be a non-empty subset of {LORA_TARGETS}")


def _check_merge(cfg, prefix: str, earlier: list[str], process_count: int) -> None:
    from qzhou_jax.merging import METHODS

    m = cfg.merge
    if m.method not in METHODS:
        raise ConfigError(prefix + "merge.method", m.method, f"must be one of {METHODS}")
    models = tuple(m.models)
    if len(models) < 2:
        raise ConfigError(prefix + "merge.models", models, f"give two or more: earlier stages {earlier} or paths")
    if m.weights and len(m.weights) != len(models):
        raise ConfigError(prefix + "merge.weights", tuple(m.weights), f"one weight per model ({len(models)}), or ()")
    if m.method == "slerp" and len(models) != 2:
        raise ConfigError(prefix + "merge.models", models, "slerp merges exactly two models")
    if m.method == "ties":
        if not m.base:
            raise ConfigError(prefix + "merge.base", m.base, "ties needs the models' common ancestor: a stage, a "
                              "path, or 'base' (model.hf_dir)")
        if not 0 < m.density <= 1:
            raise ConfigError(prefix + "merge.density", m.density, "must be within (0, 1]")
    for spec in models + ((m.base,) if m.base and m.base != "base" else ()):
        if spec not in earlier and not os.path.exists(spec):
            raise ConfigError(prefix + "merge.models", models, f"{spec!r} is neither an earlier stage {earlier} "
                              f"(stages run in name order) nor an existing workdir / HF directory")
    if process_count > 1:
        raise ConfigError(prefix + "merge.enabled", True, "merge stages run on one host")


def _check_refresh(cfg, prefix: str, process_count: int) -> None:
    """mine.every (hard negatives refreshed during the stage)."""
    if not cfg.get("mine") or "every" not in cfg.mine:
        return
    _positive_int(cfg, "mine.every", prefix, minimum=0)
    if not cfg.mine.every:
        return
    if process_count > 1:
        raise ConfigError(prefix + "mine.every", cfg.mine.every, "refreshing negatives during training runs on one "
                          "host only (its encoder reads embeddings back on the host); mine between stages instead "
                          "(mine.enabled)")
    from qzhou_jax.mining.refresh import mined_dataset_names
    try:
        mined_dataset_names(cfg)
    except ValueError as e:
        raise ConfigError(prefix + "mine.datasets", tuple(cfg.mine.datasets), str(e)) from None


# ---------------------------------------------------------------------------------------------------- resume
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": leaf}; lists/tuples stay leaves (as JSON lists)."""
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def resume_changes(saved: Mapping, current: Mapping) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key whose value differs, sorted by key."""
    a, b = flatten(saved), flatten(current)
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(workdir: str, step: int, saved_meta: Mapping, current_config: Mapping,
                 current_shapes: Mapping[str, str]) -> list[tuple[str, Any, Any]]:
    """Lists the changed keys; raises ConfigError when the saved state's structure differs from the current one."""
    changes = resume_changes(saved_meta.get("config", {}), current_config)
    saved_shapes = saved_meta.get("state_shapes")
    if saved_shapes is not None and dict(saved_shapes) != dict(current_shapes):
        differ = sorted(set(saved_shapes) ^ set(current_shapes))
        differ += sorted(k for k in set(saved_shapes) & set(current_shapes) if saved_shapes[k] != current_shapes[k])
        keys = [k for k, _, _ in changes if k.startswith(("model.", "optim.", "init_from"))] or [k for k, *_ in changes]
        raise ConfigError(", ".join(keys) or "model", "changed", f"cannot resume the checkpoint at step {step} in "
                          f"{workdir}: the saved state's structure differs ({len(differ)} entries, e.g. "
                          f"{differ[:3]}); use a new workdir, or revert these keys")
    return changes
