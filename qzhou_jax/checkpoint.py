"""Orbax checkpoints of a training run: state, Grain iterator, config; resume, fallback, stage hand-off.

Layout: `WORKDIR/checkpoints/<step>/{state, data_iter, meta}`.
- `state`: params, optimizer state and step (sharded arrays, restored straight into their shardings);
- `data_iter`: the Grain iterator's state, one file per host (Grain's own Orbax handler);
- `meta`: JSON with the model config, the run config and the RNG seed.
Orbax writes every checkpoint to a temporary directory and renames it when complete, and deletes old ones only
after a newer one is committed, so a crash mid-save never costs a finished checkpoint. A checkpoint that is
still unreadable (disk corruption, a partial copy) is reported, moved aside and the previous one is used.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from qzhou_jax.model import ModelConfig

log = logging.getLogger(__name__)

ITEMS = ("state", "data_iter", "meta")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, every: int, keep: int, keep_best: bool = False, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True) -> ocp.CheckpointManager:
    best_fn = (lambda metrics: metrics[best_metric]) if keep_best and best_metric else None
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, best_fn=best_fn, best_mode=best_mode,
        keep_checkpoints_without_metrics=True, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data_iter": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, meta: dict, *, force: bool = False,
         metrics: dict | None = None) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(data_iter),
                              meta=ocp.args.JsonSave(meta))
    return manager.save(step, args=args, force=force, metrics=metrics)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter) -> tuple[Any, int, dict] | None:
    """(state, step, meta) from the newest readable checkpoint, or None when there is none.

    A checkpoint that cannot be read is reported and the previous one tried; once one restores, the unreadable
    newer ones are moved aside (their step numbers will be written again). If checkpoints exist but none can be
    read, nothing is moved and the error is raised: a run never silently starts over.
    A checkpoint saved by another number of processes has no iterator file for this one; every host's iterator
    state is the same global position of the step mixture, so it is used as it is (a run may change host count).
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        own_iter = _iter_file(manager, step, jax.process_index(), jax.process_count())
        if os.path.exists(own_iter):
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
            if "data_iter" not in items:
                data_iter.set_state(_iter_state_from_other_topology(manager, step))
        except Exception as e:  # noqa: BLE001 - any failure to read means: not a usable checkpoint
            _warn(f"checkpoint step {step} in {manager.directory} is unreadable ({type(e).__name__}: "
                  f"{str(e)[:300]}); trying the previous one")
            failed.append((step, e))
            continue
        for bad_step, error in failed:
            _set_aside(manager, bad_step)
        log.info("resumed from checkpoint step %d", step)
        return restored["state"], step, restored["meta"]
    if failed:
        raise RuntimeError(f"{manager.directory}: none of the checkpoints {[s for s, _ in failed]} can be restored; "
                           f"newest error: {failed[0][1]!r}. Fix or remove them (a changed model or optimizer "
                           f"config also makes them unreadable); nothing was moved.")
    return None


def _iter_file(manager, step, index, count) -> str:
    return os.path.join(str(manager.directory), str(step), "data_iter", f"process_{index}-of-{count}.json")


def _iter_state_from_other_topology(manager: ocp.CheckpointManager, step: int) -> dict:
    folder = os.path.join(str(manager.directory), str(step), "data_iter")
    files = sorted(glob.glob(os.path.join(folder, "process_*-of-*.json")))
    states = set()
    for path in files:
        with open(path) as f:
            states.add(f.read())
    if len(states) != 1:
        raise ValueError(f"{folder}: {len(states)} distinct iterator states in {len(files)} host files; resume with "
                         f"the number of processes it was saved with")
    log.info("checkpoint step %d was saved by %d processes; its iterator position carries over", step, len(files))
    return json.loads(states.pop())


def _warn(message: str) -> None:
    log.warning(message)
    print(f"WARNING: {message}", flush=True)


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    if jax.process_count() > 1:  # every host has finished reading before process 0 renames
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"set_aside_{step}")
    directory = os.path.join(str(manager.directory), str(step))
    aside = f"{directory}.corrupt-{int(time.time())}"
    if jax.process_index() == 0 and os.path.isdir(directory):
        os.rename(directory, aside)
        _warn(f"moved unreadable checkpoint step {step} to {aside}")
    manager.reload()


def model_config_to_dict(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def model_config_from_dict(raw: dict) -> ModelConfig:
    return ModelConfig(**raw)


def restore_params(workdir: str, step: int | None = None, shardings=None) -> tuple[Any, ModelConfig, dict]:
    """Params only (no optimizer state) from a training workdir: stage hand-off, export, evaluation.

    Returns (params, model_config, meta). `shardings`: a params-shaped pytree of shardings, or None to restore
    onto the default device.
    """
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"{workdir}: no checkpoint under {checkpoint_dir(workdir)}")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{workdir}: no checkpoint for step {step}; available: {sorted(steps)}")
    candidates = [step] if step is not None else steps
    last_error = None
    for candidate in candidates:
        try:
            meta = manager.restore(candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            config = model_config_from_dict(meta["model_config"])
            metadata = manager.item_metadata(candidate)["state"]
            tree = metadata.tree if hasattr(metadata, "tree") else metadata
            params_meta = tree["params"] if isinstance(tree, dict) else tree.params
            if shardings is None:
                default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
                shardings = jax.tree.map(lambda _: default, params_meta)
            target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                                  params_meta, shardings)
            restored = manager.restore(candidate, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": target}, restore_args=jax.tree.map(
                    lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), {"params": target}),
                    partial_restore=True)))
            return restored["state"]["params"], config, {**meta, "step": candidate}
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            if step is not None:
                raise
            last_error = e
            log.warning("checkpoint step %d unreadable (%s); trying an older one", candidate, e)
    raise RuntimeError(f"{workdir}: no readable checkpoint ({last_error})")


def is_workdir(path: str) -> bool:
    return os.path.isdir(checkpoint_dir(path))
