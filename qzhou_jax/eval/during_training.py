"""Evaluation inside the training loop: the trainer's live params -> {"eval/<task>/<metric>": value}.

    evaluator = make_evaluator(cfg.eval, model_config, tokenizer)   # once, at setup
    scalars = evaluator(state.params)                                # every cfg.eval.every steps

The params may stay sharded over the training mesh: the encoder's jitted forward takes them as they are (no gather
onto one device). Keys per task: its summary metrics (tasks.SUMMARY_METRICS) and `main_score`; plus
`eval/mean_main_score` (a single number to pick the best checkpoint by) and `eval/seconds`.
cfg.eval keys: tasks (names, or a comma string), split (tasks lacking it use their own evaluation split),
max_examples (0 = all; subsets are fixed, so successive evaluations compare like with like), batch_size,
max_length, and optionally instructions (a JSON file {task: instruction}).
Multi-host runs are not supported yet: the encoder reads embeddings back with np.asarray, which needs every
shard on this host.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Callable, Mapping

import numpy as np

from qzhou_jax.eval.evaluate import pick_split
from qzhou_jax.eval.tasks import SUMMARY_METRICS, get_tasks
from qzhou_jax.tokenizer import PromptConfig, check_vocab

log = logging.getLogger(__name__)


def make_evaluator(eval_cfg: Mapping[str, Any], model_config, tokenizer,
                   prompt: PromptConfig = PromptConfig()) -> Callable[[Any], dict[str, float]]:
    """A callable params -> {"eval/<task>/<metric>": float}. Bad task names fail here, at setup.

    `prompt`: the training data's prompt format (run_meta.prompt_config(cfg)), so evaluation prompts as training did.
    """
    from qzhou_jax.encode import Encoder  # local: keeps importing this module light

    tasks = get_tasks(eval_cfg.get("tasks", ()), eval_cfg.get("instructions") or None)
    split = eval_cfg.get("split") or None
    max_examples = int(eval_cfg.get("max_examples", 0) or 0)
    batch_size, max_length = int(eval_cfg.get("batch_size", 64)), int(eval_cfg.get("max_length", 512))
    check_vocab(tokenizer, model_config.vocab_size, "eval")
    with warnings.catch_warnings(record=True) as caught:  # warn about split fallbacks once, not every evaluation
        warnings.simplefilter("always")
        splits = {task.name: pick_split(task, split) for task in tasks}
    for w in caught:
        log.warning("eval: %s", w.message)

    def evaluator(params) -> dict[str, float]:
        start = time.time()
        encoder = Encoder(params, model_config, tokenizer, max_length=max_length, batch_size=batch_size,
                          prompt=prompt)
        out: dict[str, float] = {}
        for task in tasks:
            scores = task.run(encoder, splits[task.name], max_examples)
            for metric in SUMMARY_METRICS[task.type]:
                out[f"eval/{task.name}/{metric}"] = scores[metric]
            out[f"eval/{task.name}/main_score"] = scores["main_score"]
        out["eval/mean_main_score"] = float(np.mean([out[f"eval/{t.name}/main_score"] for t in tasks]))
        out["eval/seconds"] = time.time() - start
        return out

    return evaluator
