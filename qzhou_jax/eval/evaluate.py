"""Evaluate one model, or two side by side, on the local tasks (eval/tasks.py); write a results JSON and a table.

    python -m qzhou_jax.evaluate --model DIR --tasks STSBenchmark,SciFact --output results.json
    python -m qzhou_jax.evaluate --model random:demo --compare workdirs/demo/stage2 --tasks all --output r.json

--model / --compare take
  * a Hugging Face Qwen2 directory or a qzhou-jax export (holds config.json),
  * a training workdir (holds checkpoints/): the newest readable checkpoint, or --step / --compare-step; its
    tokenizer is the one the run recorded (model.tokenizer or model.hf_dir), else the built-in Qwen2.5 one,
  * random:<preset>[:<seed>] (qzhou_jax.model presets, e.g. random:demo): untrained random weights (seed: the
    suffix, else --seed), the baseline for "untrained vs trained" tables,
  * st:<dir> or st:<known name> (st:all-MiniLM-L6-v2): a sentence-transformers model (eval/st_encoder.py), scored
    on plain texts (QZhou's instructions ignored, its name says so) unless --st-instructions.
The JSON is a list of {model, task, split, metric, value} rows (raw metrics in [0, 1] or [-1, 1]; non-finite
values are null). The table prints each task's main score x100, as MTEB's leaderboard does.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from qzhou_jax.run import meta as run_meta
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.eval import TextEncoder
from qzhou_jax.eval.st_encoder import ST_PREFIX, display_name, load_st_encoder
from qzhou_jax.eval.tasks import TASKS, Task, get_tasks

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"


# ================================================================================================= models
def load_encoder(spec: str, *, dtype: str = "float32", max_length: int = 512, batch_size: int = 32,
                 step: int | None = None, seed: int = 0, st_instructions: bool = False):
    """An `Encoder` for an HF/export directory, a training workdir or random:<preset>, or an `STEncoder` for st:...
    (see the module docstring)."""
    if spec.startswith(ST_PREFIX):
        if step is not None:
            raise UsageError(f"{spec}: --step applies to training workdirs only")
        return load_st_encoder(spec, use_instructions=st_instructions, max_length=max_length, batch_size=batch_size)
    from qzhou_jax.run import checkpoint
    from qzhou_jax.encode import Encoder
    from qzhou_jax.tokenizer import load_tokenizer

    kwargs = dict(max_length=max_length, batch_size=batch_size)
    if spec.startswith(RANDOM_PREFIX):
        import jax
        from qzhou_jax import model as qmodel

        name, _, seed_text = spec[len(RANDOM_PREFIX):].partition(":")
        if seed_text:
            if not seed_text.isdigit():
                raise UsageError(f"{spec}: expected {RANDOM_PREFIX}<preset>[:<seed>], seed a non-negative integer")
            seed = int(seed_text)
        try:
            config = qmodel.preset(name, dtype=dtype)
        except KeyError as e:
            raise UsageError(f"{spec}: {e.args[0]}") from None
        tokenizer = load_tokenizer()
        _check_vocab(spec, config, tokenizer)
        params = jax.jit(lambda rng: qmodel.init_params(config, rng))(jax.random.key(seed))
        return Encoder(params, config, tokenizer, name=spec, **kwargs)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"{spec}: no such directory (expected an HF/export directory, a training workdir "
                                f"or {RANDOM_PREFIX}<preset>)")
    if not os.path.exists(os.path.join(spec, "config.json")):
        try:  # a training workdir, or a multi-stage one (its last stage)
            workdir = run_meta.resolve_workdir(spec)
        except FileNotFoundError:
            stages = sorted(p.name for p in Path(spec).iterdir() if checkpoint.is_workdir(str(p)))
            hint = f"; its stages are workdirs without a checkpoint: {', '.join(stages)}" if stages else ""
            raise FileNotFoundError(f"{spec}: neither a training workdir (no checkpoints/) nor a model directory "
                                    f"(no config.json){hint}") from None
        params, config, meta = checkpoint.restore_params(workdir, step=step)
        config = config.replace(dtype=dtype)  # compute dtype; the params keep their stored dtype
        tokenizer = load_tokenizer(_recorded_tokenizer(workdir, meta))
        _check_vocab(spec, config, tokenizer)
        log.info("%s: checkpoint step %s", workdir, meta.get("step"))
        return Encoder(params, config, tokenizer, prompt=run_meta.prompt_from_meta(meta),
                       name=f"{os.path.basename(os.path.normpath(workdir))}-step{meta.get('step')}", **kwargs)
    if step is not None:
        raise UsageError(f"{spec}: --step applies to training workdirs only")
    return Encoder.from_pretrained(spec, dtype=dtype, **kwargs)


def _recorded_tokenizer(workdir: str, meta: Mapping) -> str | None:
    path = run_meta.tokenizer_from_meta(meta, workdir)
    if path and not os.path.isdir(path):
        warnings.warn(f"{workdir}: the recorded tokenizer directory {path} is gone; using the built-in Qwen2.5 one")
        return None
    return path


def _check_vocab(spec: str, config, tokenizer) -> None:
    from qzhou_jax.tokenizer import check_vocab
    check_vocab(tokenizer, config.vocab_size, spec)


# ============================================================================================= evaluation
def pick_split(task: Task, split: str | None) -> str:
    """`split` where the task has it, else the task's own evaluation split (with a warning)."""
    if split is None or split in task.splits:
        return task.resolve_split(split)
    warnings.warn(f"{task.name} has no {split!r} split (available: {sorted(task.splits)}); "
                  f"using its evaluation split {task.eval_split!r}", stacklevel=2)
    return task.eval_split


def evaluate(encoder: TextEncoder, tasks: str | Sequence[str] | Sequence[Task] = "all", *, split: str | None = None,
             max_examples: int = 0, instructions: Mapping[str, str | None] | str | None = None,
             model_name: str = "model") -> list[dict]:
    """Runs `tasks` (names, "all", a comma list, or Task objects) -> [{model, task, split, metric, value}, ...].

    Per task, main_score comes first, then its other metrics in the task's order.
    """
    if isinstance(tasks, str) or (tasks and not isinstance(tasks[0], Task)):
        tasks = get_tasks(tasks, instructions)
    elif instructions is not None:
        raise ValueError("instructions apply to task names; Task objects carry their own (Task.with_instruction)")
    rows = []
    for task in tasks:
        task_split = pick_split(task, split)
        start = time.time()
        scores = task.run(encoder, task_split, max_examples)
        log.info("%s %s/%s: %s %.4f (%.1fs)", model_name, task.name, task_split, task.main_metric,
                 scores["main_score"], time.time() - start)
        ordered = {"main_score": scores["main_score"], **scores}
        rows += [dict(model=model_name, task=task.name, split=task_split, metric=metric,
                      value=value if math.isfinite(value) else None) for metric, value in ordered.items()]
    return rows


def results_table(rows: Sequence[dict], main_metrics: Mapping[str, str] | None = None) -> str:
    """Main score x100 per task (rows) and model (columns), a mean row, and B - A when there are two models.

    `main_metrics` names each task's main metric where it is not our task's (mteb_local: mteb's)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    main = {(r["model"], r["task"]): r for r in rows if r["metric"] == "main_score"}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    labels = [chr(ord("A") + i) if len(models) > 1 else "score" for i in range(len(models))]
    header = ["task", "split", "metric"] + labels + (["B-A"] if len(models) == 2 else [])
    body = []
    for task in tasks:
        values = [main.get((m, task), {}).get("value") for m in models]
        split = next(main[(m, task)]["split"] for m in models if (m, task) in main)
        metric = (main_metrics or {}).get(task) or (TASKS[task].main_metric if task in TASKS else "main_score")
        body.append([task, split, metric] + [_fmt(v) for v in values] + _delta(values))
    if len(tasks) > 1:
        means = [_mean([main.get((m, t), {}).get("value") for t in tasks]) for m in models]
        body.append(["mean", "", ""] + [_fmt(v) for v in means] + _delta(means))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = [f"{label}: {model}" for label, model in zip(labels, models)] if len(models) > 1 else [
        f"model: {models[0]}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in body]
    return "\n".join(lines) + "\n(main scores x100)"


def _fmt(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _delta(values) -> list[str]:
    if len(values) != 2:
        return []
    a, b = values
    return ["-" if a is None or b is None else f"{100 * (b - a):+.2f}"]


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def write_json(rows: Sequence[dict], path: str) -> None:
    """Atomically (temp file + rename), so a crash never leaves half a results file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def model_name(spec: str, step: int | None, st_instructions: bool, taken: list[str]) -> str:
    """A --model / --compare column's name: the spec, @step for a chosen checkpoint, how an st: model is prompted,
    and "(again)" when the same name is already a column."""
    name = spec if step is None else f"{spec}@{step}"
    name = display_name(name, st_instructions) if spec.startswith(ST_PREFIX) else name
    return name if name not in taken else f"{name} (again)"


if __name__ == "__main__":  # `python -m qzhou_jax.eval.evaluate`: the command is qzhou_jax/cli/evaluate.py
    from qzhou_jax.cli.evaluate import main

    main()
