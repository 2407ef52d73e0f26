"""Orbax checkpoints of a training run: state, Grain iterator, config; resume, fallback, stage hand-off.

Layout: `WORKDIR/checkpoints/<step>/{state, data_iter, meta}`.
- `state`: params, optimizer state and step (sharded arrays, restored straight into their shardings);
- `data_iter`: the Grain iterator's state, one file per host (Grain's own Orbax handler);
- `meta`: JSON with the model config, the run config, the state's fingerprint and structure (fingerprint.py),
  and the iterator state again (for a resume on another host count).
Orbax writes every checkpoint to a temporary directory and renames it when complete, and deletes old ones only
after a newer one is committed, so a crash mid-save never costs a finished checkpoint. A checkpoint that is
still unreadable (disk corruption, a partial copy), or whose arrays do not match the fingerprint saved with
them, is reported, moved aside and the previous one is used.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import time
import weakref
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from qzhou_jax.run import fingerprint
from qzhou_jax.cli_errors import RunFailed
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


class CheckpointSaveError(RunFailed):
    """A checkpoint save failed (e.g. a full disk); names the directory and its free space."""


# The step of each manager's asynchronous save still to be settled. Orbax's finalize thread consumes a failed
# background write's error (manager.check_for_errors() then sees nothing) and re-raises it only from the next
# save's wait, which named the wrong step; so the loop settles the save itself as soon as it has finished.
_PENDING: "weakref.WeakKeyDictionary[ocp.CheckpointManager, int]" = weakref.WeakKeyDictionary()


def save_error(manager: ocp.CheckpointManager, step: int | None, error: BaseException) -> CheckpointSaveError:
    """The error of a failed save: its step, the path it was written to (the partial directory is removed),
    the free space there."""
    directory = str(manager.directory)
    try:
        usage = shutil.disk_usage(directory)
        space = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
    except OSError:
        space = "free space unknown"
    partial = _remove_partial(manager, step) if step is not None else []
    what = f"step {step}" if step is not None else "a background save"
    where = partial[0] if partial else directory
    removed = f"; removed the partial {', '.join(partial)}" if partial else ""
    return CheckpointSaveError(f"saving checkpoint {what} to {where} failed ({type(error).__name__}: "
                               f"{_excerpt(str(error))}); {space} in {directory}{removed}. The "
                               f"checkpoints already committed are intact; free space (or point the workdir "
                               f"elsewhere) and rerun to resume from the newest.")


def _excerpt(text: str, keep: int = 160) -> str:
    """Both ends of a long message: storage errors put the cause (e.g. "No space left on device") last."""
    text = " ".join(text.split())
    return text if len(text) <= 2 * keep + 5 else f"{text[:keep]} ... {text[-keep:]}"


def _remove_partial(manager: ocp.CheckpointManager, step: int) -> list[str]:
    """Deletes what a failed save of `step` left: Orbax's `<step>.orbax-checkpoint-tmp-*` directories (on a full
    disk they hold the space the rerun needs). Returns their paths (process 0 removes; every process names)."""
    pattern = os.path.join(glob.escape(str(manager.directory)), f"{step}.orbax-checkpoint-tmp*")
    partial = sorted(glob.glob(pattern))
    if jax.process_index() == 0:
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
    return partial


def check_background_save(manager: ocp.CheckpointManager) -> None:
    """Called every step: once the asynchronous save in flight has finished, settles it, so a failed one raises
    CheckpointSaveError at the next step, naming its own step and path. Cheap while it is still writing."""
    if _PENDING.get(manager) is not None and not manager.is_saving_in_progress():
        settle(manager)
    try:
        manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 - whatever the writer raised, the run must stop and say where
        raise save_error(manager, _PENDING.pop(manager, None), e) from e


def settle(manager: ocp.CheckpointManager) -> None:
    """Waits for the save in flight (if any); raises CheckpointSaveError naming its step if it failed."""
    step = _PENDING.pop(manager, None)
    try:
        manager.wait_until_finished()
        manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
        raise save_error(manager, step, e) from e


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, meta: dict, *, force: bool = False,
         metrics: dict | None = None) -> bool:
    """Saves state + iterator + meta; meta also records the state's fingerprint and structure (checked on
    restore) and the iterator state (used when the host count changed)."""
    meta = {**meta, "fingerprint": fingerprint.fingerprint(_parts(state)),
            "state_shapes": fingerprint.shapes(_parts(state)), "data_iter_state": data_iter.get_state()}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(data_iter),
                              meta=ocp.args.JsonSave(meta))
    settle(manager)  # an earlier save that failed is reported under its own step, before this one starts
    try:
        saved = manager.save(step, args=args, force=force, metrics=metrics)
    except Exception as e:  # noqa: BLE001
        raise save_error(manager, step, e) from e
    if saved:
        _PENDING[manager] = step
    return saved


def _parts(state) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def state_shapes(abstract_state) -> dict[str, str]:
    return fingerprint.shapes(_parts(abstract_state))


def _verify(fingerprint_saved: dict | None, tree: dict, where: str) -> None:
    """Raises when the restored arrays differ from what was saved (silent disk corruption, a bad copy)."""
    if fingerprint_saved is None:  # a checkpoint from before fingerprints
        return
    current = fingerprint.fingerprint(tree)
    saved = {k: v for k, v in fingerprint_saved.items() if k in current}
    if bad := fingerprint.mismatches(saved, current):
        raise ValueError(f"{where}: restored arrays do not match the fingerprint saved with them "
                         f"({len(bad)} leaves, e.g. {bad[:3]}): the files were changed after saving")


def latest_meta(manager: ocp.CheckpointManager) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint whose meta reads, or None."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # noqa: BLE001 - an unreadable one is handled by restore_latest
            continue
    return None


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter) -> tuple[Any, int, dict] | None:
    """(state, step, meta) from the newest readable checkpoint, or None when there is none.

    A checkpoint that cannot be read, or whose arrays do not match the fingerprint saved with them, is reported
    and the previous one tried; once one restores, the unreadable newer ones are moved aside (their step numbers
    will be written again). If checkpoints exist but none can be read, nothing is moved and the error is raised:
    a run never silently starts over. A checkpoint saved by another number of processes has no iterator file
    for this one: the iterator state recorded in its meta (the same global position on every host) is used.
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = _restore_step(manager, step, abstract_state, data_iter)
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
        raise RunFailed(f"{manager.directory}: none of the checkpoints {[s for s, _ in failed]} can be restored; "
                        f"newest error: {failed[0][1]!r}. Fix or remove them (a changed model or optimizer "
                        f"config also makes them unreadable); nothing was moved.")
    return None


def _restore_step(manager, step, abstract_state, data_iter) -> dict:
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            **items, data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # noqa: BLE001 - e.g. no iterator file for this host count: the meta's copy
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if "data_iter_state" not in restored["meta"]:
            raise e
        data_iter.set_state(restored["meta"]["data_iter_state"])
        log.info("checkpoint step %d: iterator position taken from its metadata (%s)", step, type(e).__name__)
    _verify(restored["meta"].get("fingerprint"), _parts(restored["state"]), f"checkpoint step {step}")
    if jax.process_count() > 1:  # every host restored the same step (each verified its own read)
        from jax.experimental import multihost_utils
        steps = multihost_utils.process_allgather(np.array(step))
        if len(set(np.asarray(steps).ravel().tolist())) != 1:
            raise RuntimeError(f"hosts restored different checkpoint steps {sorted(set(steps.ravel().tolist()))}")
    return restored


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
    """The saved model config, as a model: partial fine-tuning (frozen_layers, freeze_embedding) is a training
    choice, not part of the network, so a restored model runs whole (export, evaluation, mining, the next stage).
    LoRA fields stay: the saved params hold the adapters (restore_params merges them by default)."""
    return ModelConfig(**{**raw, "frozen_layers": 0, "freeze_embedding": False})


def _with_adapter_shardings(shardings, params_meta):
    """`shardings` (for a plain params tree) completed with replicated shardings, on the same devices, for the
    LoRA adapters the saved tree holds (they are small, and merged into their kernels right after)."""
    from qzhou_jax.model import lora

    saved_adapters, _ = lora.split_adapters(params_meta)
    if not saved_adapters or lora.split_adapters(shardings)[0]:
        return shardings
    first = jax.tree.leaves(shardings)[0]
    replicated = (jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
                  if isinstance(first, jax.sharding.NamedSharding) else first)
    return lora.join(shardings, jax.tree.map(lambda _: replicated, saved_adapters))


class _ReadOnlyNotice(logging.Filter):
    """Orbax logs 'Given directory is read only' at warning level for every read-only manager: here read-only is
    the point (export, evaluation, a stage hand-off read another run's checkpoints), nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


def read_only_manager(workdir: str) -> ocp.CheckpointManager:
    """A manager that reads a workdir's checkpoints and never writes. Every item has its handler (an item without
    one makes Orbax warn that it 'could not be restored' whenever metadata is read); the state is read through
    PyTree*: Standard* is PyTree* underneath (same files), but only PyTreeRestore can read the params subtree
    without the optimizer state (3x the memory)."""
    absl_log = logging.getLogger("absl")
    quiet = _ReadOnlyNotice()
    absl_log.addFilter(quiet)
    try:
        return ocp.CheckpointManager(
            checkpoint_dir(workdir), item_names=ITEMS,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data_iter": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0))
    finally:
        absl_log.removeFilter(quiet)


def restore_params(workdir: str, step: int | None = None, shardings=None, *,
                   merge_lora: bool = True) -> tuple[Any, ModelConfig, dict]:
    """Params only (no optimizer state) from a training workdir: stage hand-off, export, evaluation.

    Returns (params, model_config, meta). `shardings`: a params-shaped pytree of shardings (of the plain model:
    LoRA adapters are restored replicated), or None to restore onto this process's first local device. A run
    trained with LoRA comes back merged (W + alpha/r A B, config without LoRA) unless `merge_lora=False`, which
    returns the adapters as saved (hf/peft.py writes them).
    """
    manager = read_only_manager(workdir)
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
                default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this host's, not process 0's
                target_shardings = jax.tree.map(lambda _: default, params_meta)
            else:
                target_shardings = _with_adapter_shardings(shardings, params_meta)
            target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                                  params_meta, target_shardings)
            restored = manager.restore(candidate, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": target}, restore_args=jax.tree.map(
                    lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), {"params": target}),
                    partial_restore=True)))
            params = restored["state"]["params"]
            _verify(meta.get("fingerprint"), {"params": params}, f"{workdir}: checkpoint step {candidate}")
            if merge_lora and config.lora_rank:
                from qzhou_jax.model import lora

                merge = jax.jit(lambda p: lora.merge(p, config),
                                **({"out_shardings": shardings} if shardings is not None else {}))
                params, config = merge(params), config.without_lora()
            return params, config, {**meta, "step": candidate}
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            if step is not None:
                raise
            last_error = e
            _warn(f"{workdir}: checkpoint step {candidate} unreadable ({type(e).__name__}: {str(e)[:300]}); "
                  f"trying an older one")
    raise RunFailed(f"{workdir}: no readable checkpoint ({last_error})")


def save_params(workdir: str, step: int, params, meta: dict) -> None:
    """A params-only checkpoint (no optimizer state, no data iterator), e.g. a merged model (merging/models.py):
    the directory then reads like a training workdir for restore_params, export, evaluation, mining and the next
    stage's init_from."""
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "meta"),
                                    item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=True,
                                                                         enable_async_checkpointing=False))
    tree = {"step": np.asarray(step, np.int32), "params": params}
    meta = {**meta, "fingerprint": fingerprint.fingerprint({"params": params}),
            "state_shapes": fingerprint.shapes({"params": params})}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                 force=True)
    manager.wait_until_finished()
    manager.close()


def is_workdir(path: str) -> bool:
    return os.path.isdir(checkpoint_dir(path))
