"""The trainer: config -> mesh -> state -> data -> steps -> logs / checkpoints / evals -> export.

    python -m qzhou_jax.train --config configs/stage2.py --workdir /tmp/run [--config.optim.lr=1e-5 ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint (params, optimizer, step and the
Grain iterator), so a preempted or crashed run continues exactly where its last checkpoint left it. The config is
checked first (config_check.py), the workdir is locked (workdir_lock.py), SIGTERM / Ctrl-C save and stop the whole
run (loop_guards.py), and a failed background save stops it at the next step. docs/robustness.md has the details.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from qzhou_jax import atomic, batch as batch_lib, losses, sharding
from qzhou_jax.run import checkpoint
from qzhou_jax.train import config_check
from qzhou_jax.train import hardware
from qzhou_jax.train import guards as loop_guards
from qzhou_jax.train import optim
from qzhou_jax import model as qmodel
from qzhou_jax.config import load_config  # noqa: F401 - the one config loader; train.load_config stays valid
from qzhou_jax.config.defaults import REQUIRED
from qzhou_jax.data import global_batch, pipeline as data_pipeline
from qzhou_jax.batch_schema import device_fields
from qzhou_jax.data.spec import DataConfig
from qzhou_jax.eval import tasks as eval_tasks
from qzhou_jax.train.metrics import MetricsWriter, Progress
from qzhou_jax.model import ModelConfig
from qzhou_jax.model.config import trainable_fields
from qzhou_jax.run import meta as run_meta
from qzhou_jax.run.meta import lora_base, prompt_config, run_metadata
from qzhou_jax.tokenizer import check_vocab, load_tokenizer
from qzhou_jax.train.step import (abstract_state, batch_flops, create_state, gradcache_balance, make_step_fn, mesh_context)
from qzhou_jax.train.workdir_lock import WorkdirLock
from qzhou_jax import cli_errors
from qzhou_jax.cli_errors import RunFailed

log = logging.getLogger("qzhou_jax.train")

BATCH_KEYS = tuple(batch_lib.FIELDS)  # the device fields of a host batch (batch_schema.py)


class NonFiniteError(RunFailed):
    pass


# ====================================================================================================== setup
def build_model_config(cfg) -> ModelConfig:
    m = cfg.model
    overrides = {k: m[k] for k in ("attention", "pooling", "dtype", "param_dtype", "remat_policy", "scan_layers",
                                   "attention_impl")
                 if m.get(k) is not None}
    config = ModelConfig.from_hf(m.hf_dir, **overrides) if m.get("hf_dir") else qmodel.preset(m.preset, **overrides)
    try:
        config = config.replace(**trainable_fields(m.get("trainable", "all"), config.num_layers))
    except ValueError as e:
        raise config_check.ConfigError("model.trainable", m.get("trainable"), str(e)) from None
    lora = m.get("lora")
    if lora and lora.get("rank"):
        try:
            config = config.replace(lora_rank=int(lora.rank), lora_alpha=float(lora.alpha),
                                    lora_dropout=float(lora.dropout), lora_targets=tuple(lora.targets))
        except ValueError as e:
            raise config_check.ConfigError("model.lora", lora.to_dict(), str(e)) from None
    return config


def peak_flops(cfg) -> float | None:
    """Per-device bf16 peak for MFU: train.peak_flops_per_device, else qzhou_jax/train/hardware.py's table."""
    return hardware.peak_flops(jax.devices()[0].device_kind, cfg.train.get("peak_flops_per_device") or 0.0)


def init_params(cfg, model_config: ModelConfig, shardings=None):
    """Initial params: a stage-1 workdir or an HF dir (`init_from`), else ("" or "base") the HF base model, else
    random. With LoRA, that is the (frozen) base, and fresh adapters are added (A random, B zero: the model starts
    as the base). A workdir trained with LoRA hands over its merged weights."""
    if model_config.lora_rank:
        from qzhou_jax.model import lora

        adapter_shardings, base_shardings = lora.split_adapters(shardings) if shardings is not None else (None, None)
        base = _init_base_params(cfg, model_config.without_lora(), base_shardings)
        adapters = jax.jit(lambda rng: qmodel.init_adapters(model_config, rng), out_shardings=adapter_shardings)(
            jax.random.fold_in(jax.random.key(cfg.train.seed), 1))
        log.info("LoRA rank %d (alpha %g, dropout %g) on %s: %.2fM adapter parameters", model_config.lora_rank,
                 model_config.lora_alpha, model_config.lora_dropout, ",".join(model_config.lora_targets),
                 lora.count(adapters) / 1e6)
        return lora.join(base, adapters)
    return _init_base_params(cfg, model_config, shardings)


def _init_base_params(cfg, model_config: ModelConfig, shardings=None):
    source = cfg.get("init_from") or ""
    if source == REQUIRED:
        raise config_check.ConfigError("init_from", source, "set it to a stage-1 workdir, an HF dir, or 'base'")
    if source == "base":
        source = ""
    if source and checkpoint.is_workdir(source):
        params, _, meta = checkpoint.restore_params(source, shardings=shardings)
        log.info("initialised params from workdir %s (step %s)", source, meta.get("step"))
        return params
    hf_dir = source or cfg.model.get("hf_dir")
    if hf_dir:
        from qzhou_jax.hf.load import load_params
        log.info("loading HF weights from %s", hf_dir)
        return load_params(hf_dir, model_config, shardings)
    init = jax.jit(lambda rng: qmodel.init_params(model_config, rng), out_shardings=shardings)
    return init(jax.random.key(cfg.train.seed))


@dataclasses.dataclass(frozen=True)
class StateAndSteps:
    """What the loop and the planner share (`build_state_and_steps`); nothing in it is allocated."""

    rules: sharding.ShardingRules
    tx: Any                      # the optax transformation
    abstract_state: Any          # ShapeDtypeStructs carrying their shardings
    step: Any                    # the step function (train/step.make_step_fn): every task type


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One step as the log window keeps it until the next log line."""

    task: str
    dataset_id: int
    metrics: dict[str, Any]      # device arrays, fetched at the next log line
    anchor_shape: tuple[int, ...]
    cand_shape: tuple[int, ...]


def build_state_and_steps(cfg, model_config: ModelConfig, mesh, tasks) -> StateAndSteps:
    """What the loop and plan.py share: the sharding rules, optimizer, abstract state (with shardings) and the
    step function. Nothing is allocated."""
    rules = sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(model_config))
    # The optimizer sees the trainable part only (model.partition): frozen weights get no state and no update.
    tx, schedule = optim.make_optimizer(cfg.optim, int(cfg.train.steps))
    state, state_shardings = abstract_state(model_config, tx, rules)
    loss_config = losses.loss_config_from(cfg.loss)
    chunks = cfg.train.gradcache_chunks
    batch_sizes = DataConfig.from_config(cfg.data).batch_size
    for task in sorted(set(tasks)):
        problem = gradcache_balance(int(batch_sizes[task]), chunks, rules.batch_devices)
        if problem:
            log.warning("%s: %s", task, problem)
    step = make_step_fn(config=model_config, loss_config=loss_config, tx=tx, schedule=schedule,
                        gradcache_chunks=chunks, rules=rules, state_shardings=state_shardings,
                        dropout_seed=int(cfg.train.seed))
    return StateAndSteps(rules, tx, state, step)


def to_device_batch(host_batch, rules) -> batch_lib.Batch:
    """This host's numpy batch -> the global typed Batch (its task included), each field sharded as its logical
    axes say: the one conversion, and the one check, between the data pipeline and the step."""
    arrays = global_batch.to_global(host_batch, batch_lib.host_shardings(rules, device_fields(host_batch)))
    return batch_lib.Batch.from_host(arrays, task=host_batch["task"])


class CompiledSteps:
    """A compile cache plus a cross-host barrier: the loop's step function, compiled ahead of its first run once
    per batch structure (task, present fields) and shapes.

    The compile time is logged (minutes for a 7B step on a pod; otherwise that step just looks slow), and with
    several processes the hosts meet at a barrier before running a new program: hosts that reach its collectives
    far apart (one compiles from the persistent cache, another from scratch, or on a busier machine) can time out,
    and with Gloo on CPU (jax 0.10) a reduce-scatter reached more than 30 s apart hangs for good
    (jax-ml/jax#40831, reproduced here). The barrier is an all-gather, which waits.
    """

    def __init__(self, step, mesh):
        self.step, self.mesh, self.compiled = step, mesh, {}

    def __call__(self, state, batch: batch_lib.Batch):
        leaves, tree = jax.tree.flatten(batch)  # the tree holds the task (static) and which fields are present
        key = (tree, tuple((x.shape, str(x.dtype)) for x in leaves))
        fn = self.compiled.get(key)
        if fn is None:
            t = time.time()
            with mesh_context(self.mesh):
                fn = self.step.jitted_for(batch).lower(state, batch).compile()
            log.info("compiled the %s step for %s in %.1fs", batch.task,
                     {k: tuple(v.shape) for k, v in batch.present().items()}, time.time() - t)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices(f"qzhou_jax.train: step program {len(self.compiled)} compiled")
            self.compiled[key] = fn
        return fn(state, batch)


# ====================================================================================================== run
AfterStep = Callable[[int, Any], None]  # (step, checkpoint manager): a test's fault injection point


def run(cfg, workdir: str, *, after_step: AfterStep | None = None) -> dict[str, Any]:
    """Trains per `cfg` in `workdir`; returns a summary (final step, last losses, export dir). Tests call this.

    A config with `stages` (e.g. configs/demo.py) runs each stage in `workdir/<name>`, every stage after the
    first initialised from the previous stage's final params (unless it sets its own `init_from`). A stage
    stopped by SIGTERM / Ctrl-C stops the whole run; rerunning finishes it, then runs the stages after it (a
    finished stage, marked by its `done.json`, is not run again).
    """
    config_check.check(cfg, device_count=jax.device_count(), process_count=jax.process_count())
    if not cfg.get("stages"):
        return _run_locked(cfg, workdir, after_step)
    summaries, previous = {}, None
    for name, stage in cfg.stages.items():
        stage = stage.copy_and_resolve_references()
        if previous and stage.get("init_from") in ("", REQUIRED):
            stage.init_from = previous
        stage_dir = os.path.join(workdir, name)
        print(f"==== {name} ====", flush=True)
        if stage.get("merge") and stage.merge.enabled:  # a merge stage: earlier stages (or paths) merged
            from qzhou_jax.merging.stages import merge_stage
            summaries[name] = merge_stage(stage, workdir, stage_dir, list(cfg.stages))
            previous = stage_dir
            continue
        summaries[name] = _completed(stage_dir, stage)
        if not summaries[name]:
            if stage.get("mine") and stage.mine.enabled:  # new hard negatives from the previous stage's model
                from qzhou_jax.mining.stages import remine_for_stage
                stage = remine_for_stage(stage, previous, stage_dir)
            summaries[name] = _run_locked(stage, stage_dir, after_step)
        if summaries[name].get("preempted"):
            print(f"stopped during {name}; rerun the same command to finish it and the stages after it", flush=True)
            return {"stages": summaries, **summaries[name]}
        previous = stage_dir
    return {"stages": summaries, **summaries[name]}


def _completed(workdir: str, cfg) -> dict | None:
    path = os.path.join(workdir, DONE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    if done.get("step") != int(cfg.train.steps):
        return None
    print(f"{workdir} already finished (step {done['step']}, {DONE}); not run again", flush=True)
    return done


DONE = "done.json"


def _run_locked(cfg, workdir: str, after_step: AfterStep | None) -> dict[str, Any]:
    try:  # before any data loads or step compiles: an unwritable workdir would fail only at the first save
        os.makedirs(workdir, exist_ok=True)
        if not os.access(workdir, os.W_OK):
            raise PermissionError(13, "not writable", workdir)
    except OSError as e:
        raise cli_errors.UsageError(f"--workdir: cannot write to {workdir} ({e.strerror or e})") from None
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _run_stage(cfg, workdir, after_step)


def _run_stage(cfg, workdir: str, after_step: AfterStep | None) -> dict[str, Any]:
    t_setup = time.time()
    model_config = build_model_config(cfg)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape))
    log.info("mesh %s over %d devices (%s); model %.1fM params", dict(mesh.shape), mesh.size,
             jax.devices()[0].device_kind, model_config.num_params() / 1e6)

    total_steps = int(cfg.train.steps)
    # ---- data: Grain mixture, one dataset per global batch, this host's slice
    tokenizer = load_tokenizer(cfg.model.get("tokenizer") or cfg.model.get("hf_dir") or None)
    check_vocab(tokenizer, model_config.vocab_size, "model.tokenizer")
    tokenizer_dir = _keep_tokenizer(tokenizer, workdir)
    refresher = _make_refresher(cfg, workdir, tokenizer, model_config)
    mined = _refresh_in_force(workdir) if refresher else None  # the refresh the newest checkpoint trains on

    def make_data(record):  # mine.every: the data the refresh in force (`record`) points at
        data_cfg = refresher.config_for(record) if refresher else cfg
        return data_pipeline.build_pipeline(data_cfg.data, tokenizer, process_index=jax.process_index(),
                                            process_count=jax.process_count(),
                                            row_chunks=max(1, int(cfg.train.gradcache_chunks or 1)),
                                            evaluation_texts=eval_tasks.evaluation_texts)

    dataset, info = make_data(mined)
    log.info("data mixture:\n%s", info.table())
    if report := info.skipped.report():
        print(f"skipped rows (per dataset and reason):\n{report}", flush=True)
    data_iter = iter(dataset)

    # ---- state and steps: every sharding from one rules object; one compiled step per task type
    built = build_state_and_steps(cfg, model_config, mesh, info.tasks)
    rules, tx, abstract_state = built.rules, built.tx, built.abstract_state
    param_shardings = jax.tree.map(lambda a: a.sharding, abstract_state.params)
    state_shardings = jax.tree.map(lambda a: a.sharding, abstract_state)

    # ---- resume, or initialise
    manager = checkpoint.make_manager(workdir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                      keep_best=cfg.checkpoint.keep_best, best_metric=cfg.checkpoint.best_metric,
                                      async_save=cfg.checkpoint.async_save)
    config_json = json.loads(cfg.to_json_best_effort())
    if latest := checkpoint.latest_meta(manager):  # changed keys listed; a changed state structure refused
        changes = config_check.check_resume(workdir, latest[0], latest[1], config_json,
                                            checkpoint.state_shapes(abstract_state))
        if changes:
            print(f"resuming with {len(changes)} changed config key(s): " + "; ".join(
                f"{k}: {old!r} -> {new!r}" for k, old, new in changes), flush=True)
    restored = checkpoint.restore_latest(manager, abstract_state, data_iter)
    if restored is not None:
        state, start_step, restored_meta = restored
        print(f"resuming from checkpoint step {start_step} in {workdir}", flush=True)
        if refresher and _refresh_step(restored_meta.get("mined")) != _refresh_step(mined):
            # an older checkpoint than the newest meta (the newest was unreadable): its own refresh's data
            mined = restored_meta.get("mined")
            position = data_iter.get_state()
            dataset, info = make_data(mined)
            data_iter = iter(dataset)
            data_iter.set_state(position)
    else:
        params = init_params(cfg, model_config, param_shardings)
        state = jax.jit(lambda p: create_state(p, tx, model_config), out_shardings=state_shardings)(params)
        start_step = 0
    meta = {"model_config": checkpoint.model_config_to_dict(model_config), "config": config_json,
            "data": {"names": info.names, "tasks": info.tasks, "sizes": info.sizes}, **run_metadata(cfg, tokenizer_dir)}
    if refresher:
        meta["mined"] = mined
        if mined:
            print(f"training on the negatives of the mine refresh at step {mined['step']}", flush=True)

    writer = MetricsWriter(workdir, resume_step=start_step)
    progress = Progress(total_steps, start_step)
    evaluator = _make_evaluator(cfg, model_config, tokenizer)
    stop = loop_guards.StopRequest(manager)
    compiled_steps = CompiledSteps(built.step, mesh)
    stall = loop_guards.StallDetector(cfg.train.stall_steps)
    peak = peak_flops(cfg)
    log.info("setup took %.1fs; training steps %d -> %d", time.time() - t_setup, start_step, total_steps)

    # ---- the loop
    last_losses: list[float] = []
    step, t_last, window, saved_step = start_step, time.time(), [], None

    def save(metrics=None):  # at most once per step (a stop request right after a regular save)
        nonlocal saved_step
        if saved_step != step:
            checkpoint.save(manager, step, state, data_iter, meta, force=True, metrics=metrics)
            saved_step = step

    try:
        while step < total_steps:
            checkpoint.check_background_save(manager)  # a failed async save stops the run now, not at the next
            host_batch = next(data_iter)
            batch = to_device_batch(host_batch, rules)
            state, metrics = compiled_steps(state, batch)
            step += 1
            shapes = [batch.packed_ids.shape] * 2 if batch.packed else [batch.anchor_ids.shape, batch.cand_ids.shape]
            window.append(StepRecord(batch.task, int(host_batch["dataset_id"][0]), metrics, *shapes))

            if step % cfg.train.log_every == 0 or step == total_steps:
                jax.block_until_ready(metrics)  # steps run asynchronously: time them when they are done
                fetched = jax.device_get([(w.metrics["loss"], w.metrics["grad_norm"]) for w in window])
                for i, (loss, grad_norm) in enumerate(fetched):
                    stall.update(step - len(window) + 1 + i, float(loss), float(grad_norm))
                scalars = _summarise(window, info, model_config, time.time() - t_last, mesh.size, peak)
                _check_finite(scalars, cfg.train.max_consecutive_nonfinite)
                last_losses.append(scalars["loss"])
                writer.write(step, scalars)
                print(progress.line(step, {**scalars, "task": batch.task}), flush=True)
                window = []

            if refresher is not None and refresher.due(step):  # new hard negatives from the live params
                t_refresh = time.time()
                mined = refresher.refresh(step, state.params)
                position = data_iter.get_state()
                dataset, info = make_data(mined)
                data_iter = iter(dataset)
                data_iter.set_state(position)  # the same global position: batch step + 1 is next
                meta["mined"] = mined
                meta["data"] = {"names": info.names, "tasks": info.tasks, "sizes": info.sizes}
                print(describe_refresh(mined), flush=True)
                writer.write(step, {f"mine/{k}": float(v) for k, v in mined["cost"].items()})
                t_last += time.time() - t_refresh  # throughput windows exclude refresh time

            eval_metrics = None
            if evaluator is not None and (step % cfg.eval.every == 0 or step == total_steps):
                eval_metrics = evaluator(state.params)
                writer.write(step, eval_metrics)
                print("eval " + " | ".join(f"{k} {x:.4f}" for k, x in eval_metrics.items()), flush=True)
            if step % cfg.checkpoint.every == 0 or step == total_steps:
                save(eval_metrics)

            if not window:  # throughput windows exclude evaluation and checkpoint time
                t_last = time.time()
            if after_step is not None:
                after_step(step, manager)
            if reason := stop.reached(step):
                save()
                _wait(manager)
                print(f"{reason}: saved checkpoint at step {step}; exiting", flush=True)
                return {"step": step, "preempted": True, "losses": last_losses, "workdir": workdir}

        _wait(manager)
        summary = {"step": step, "losses": last_losses, "workdir": workdir}
        summary.update(_finish(cfg, workdir, state, model_config, tokenizer))
        if jax.process_index() == 0:
            atomic.write_json(os.path.join(workdir, DONE), summary)
        return summary
    finally:
        stop.restore()
        writer.close()


def _keep_tokenizer(tokenizer, workdir: str) -> str:
    """A copy of the run's tokenizer in its workdir, which the checkpoints record: export, evaluation and mining of
    the run then need neither the base model's directory nor the built-in Qwen2.5 tokenizer."""
    path = os.path.join(workdir, run_meta.TOKENIZER_DIR)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(path, "tokenizer.json")):
        from qzhou_jax.hf.tokenizer_files import save_tokenizer
        tmp = f"{path}.tmp{os.getpid()}"
        save_tokenizer(tokenizer, tmp)
        os.replace(tmp, path)
    return path


def _wait(manager) -> None:
    checkpoint.settle(manager)  # a failed last save names its step and path


def _summarise(window, info, model_config, seconds, num_devices, peak) -> dict[str, float]:
    fetched = jax.device_get([w.metrics for w in window])
    scalars: dict[str, float] = {}
    by_task: dict[str, list[float]] = {}
    for w, m in zip(window, fetched):
        by_task.setdefault(w.task, []).append(float(m["loss"]))
        by_task.setdefault(f"dataset/{info.names[w.dataset_id]}", []).append(float(m["loss"]))
    last = fetched[-1]
    scalars["loss"] = float(np.mean([float(m["loss"]) for m in fetched]))
    for key, values in by_task.items():
        scalars[f"loss/{key}"] = float(np.mean(values))
    for key in ("grad_norm", "learning_rate", "nonfinite_consecutive", "nonfinite_total"):
        scalars[key] = float(last[key])
    for key in ("accuracy", "top1_accuracy"):
        if key in last:
            scalars[key] = float(np.mean([float(m[key]) for m in fetched if key in m]))
    scalars["masked_duplicates"] = sum(float(m.get("masked_duplicates", 0.0)) for m in fetched)  # over the window
    for key in ("sim_spread", "pair_accuracy"):  # per task: a spread near 0 is representation collapse
        for task in sorted({w.task for w in window}):
            values = [float(m[key]) for w, m in zip(window, fetched) if w.task == task and key in m]
            if values:
                scalars[f"{key}/{task}"] = float(np.mean(values))
    examples = sum(float(m["examples"]) for m in fetched)
    tokens = sum(float(m["tokens"]) for m in fetched)
    scalars.update(examples_per_s=examples / seconds, tokens_per_s=tokens / seconds)
    flops = 0.0
    for w, m in zip(window, fetched):
        flops += batch_flops(model_config, {"anchor_ids": w.anchor_shape, "cand_ids": w.cand_shape},
                             float(m["anchor_tokens"]), float(m["cand_tokens"]))
    scalars["tflops_per_s_per_device"] = flops / seconds / num_devices / 1e12
    if peak:
        scalars["mfu"] = flops / seconds / num_devices / peak
    return scalars


def _check_finite(scalars, limit: int) -> None:
    if scalars["nonfinite_consecutive"] >= limit:
        raise NonFiniteError(f"{int(scalars['nonfinite_consecutive'])} non-finite losses/gradients in a row "
                             f"({int(scalars['nonfinite_total'])} in all); stopping. Lower the learning rate, check the "
                             f"data for empty texts, or use float32 compute.")
    if scalars["nonfinite_total"] > 0:
        log.warning("%d non-finite steps skipped so far", int(scalars["nonfinite_total"]))


def _make_refresher(cfg, workdir, tokenizer, model_config):
    """mine.every > 0: hard negatives refreshed with the live params every that many steps (mining/refresh.py)."""
    if not (cfg.get("mine") and int(cfg.mine.get("every", 0) or 0) > 0):
        return None
    from qzhou_jax.mining.refresh import Refresher
    return Refresher(cfg, workdir, tokenizer, model_config, prompt_config(cfg), total_steps=int(cfg.train.steps))


def _refresh_in_force(workdir: str) -> dict | None:
    """The mine refresh recorded in the newest checkpoint's meta (None: no checkpoint, or none recorded); read
    without creating anything, before the data pipeline is built on it."""
    if not run_meta.checkpoint_steps(workdir):
        return None
    latest = checkpoint.latest_meta(checkpoint.read_only_manager(workdir))
    return latest[1].get("mined") if latest else None


def _refresh_step(record) -> int | None:
    return record["step"] if record else None


def describe_refresh(record) -> str:
    from qzhou_jax.mining.refresh import describe
    return describe(record)


def _make_evaluator(cfg, model_config, tokenizer):
    if not cfg.get("eval") or not cfg.eval.get("tasks"):
        return None
    from qzhou_jax.eval.during_training import make_evaluator
    return make_evaluator(cfg.eval, model_config, tokenizer, prompt=prompt_config(cfg))


def _finish(cfg, workdir, state, model_config, tokenizer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.get("export") and cfg.export.get("at_end"):
        from qzhou_jax.hf.export import export_hf
        export_dir = os.path.join(workdir, "export")
        if model_config.lora_rank and cfg.export.get("peft_adapter"):
            from qzhou_jax.hf.peft import write_adapter
            adapter_dir = os.path.join(workdir, "peft_adapter")
            write_adapter(state.params, model_config, adapter_dir, base_model=lora_base(cfg))
            print(f"wrote the PEFT LoRA adapter to {adapter_dir}", flush=True)
            out["peft_adapter_dir"] = adapter_dir
        params, config = qmodel.merge_lora(state.params, model_config.whole())  # serving: plain Qwen2 weights
        export_hf(params, config, export_dir, tokenizer=tokenizer, dtype=cfg.export.dtype, overwrite=True,
                  prompt=prompt_config(cfg))
        print(f"exported HF / sentence-transformers model to {export_dir}", flush=True)
        out["export_dir"] = export_dir
    if jax.process_index() == 0 and cfg.get("plot", True):
        try:
            from qzhou_jax.train.plots import plot_training
            out["plot"] = plot_training(workdir)
        except ImportError:
            pass
    return out
