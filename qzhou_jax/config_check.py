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
from collections.abc import Mapping
from typing import Any

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.config_base import REQUIRED


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
        for name, stage in cfg.stages.items():
            _check_stage(stage, device_count, process_count, prefix=f"stages.{name}.", first=name ==
                         next(iter(cfg.stages)))
        return
    _check_stage(cfg, device_count, process_count, prefix="", first=True)


def _check_stage(cfg, device_count: int, process_count: int, prefix: str, first: bool) -> None:
    from qzhou_jax import losses, sharding
    from qzhou_jax.data.spec import DataConfig

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
    try:
        losses.loss_config_from(cfg.loss.to_dict() if hasattr(cfg.loss, "to_dict") else cfg.loss)
    except ValueError as e:
        raise ConfigError(prefix + "loss", "...", str(e)) from None
    try:
        data = DataConfig.from_config(cfg.data)
    except ValueError as e:
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
