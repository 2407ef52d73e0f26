"""The trainer's evaluator: keys, agreement with running the tasks directly, sharded params, split fallback."""
import logging

import jax
import ml_collections
import numpy as np
import pytest

from qzhou_jax import model as qmodel
from qzhou_jax import sharding
from qzhou_jax.encode import Encoder
from qzhou_jax.eval import tasks
from qzhou_jax.eval.during_training import make_evaluator
from qzhou_jax.model import ModelConfig
from qzhou_jax.tokenizer import load_tokenizer

CONFIG = ModelConfig(vocab_size=151680, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=256)
TASKS = ("STSBenchmark", "SciFact", "Banking77Classification", "Ocnli")


def eval_config(**overrides):
    cfg = ml_collections.ConfigDict(dict(every=10, tasks=TASKS, split="test", max_examples=8, batch_size=8,
                                         max_length=32))
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def setup():
    return qmodel.init_params(CONFIG, jax.random.key(0)), load_tokenizer()


def test_keys_and_values_match_running_the_tasks(setup, caplog):
    params, tokenizer = setup
    with caplog.at_level(logging.WARNING):
        evaluator = make_evaluator(eval_config(), CONFIG, tokenizer)
    assert any("Ocnli" in r.getMessage() and "'dev'" in r.getMessage() for r in caplog.records)  # no test split
    out = evaluator(params)
    expected_keys = {"eval/mean_main_score", "eval/seconds"}
    for name in TASKS:
        task = tasks.get_task(name)
        expected_keys |= {f"eval/{name}/{m}" for m in tasks.SUMMARY_METRICS[task.type]} | {f"eval/{name}/main_score"}
    assert set(out) == expected_keys
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())

    encoder = Encoder(params, CONFIG, tokenizer, max_length=32, batch_size=8)
    direct = {name: tasks.get_task(name).run(encoder, "dev" if name == "Ocnli" else "test", 8) for name in TASKS}
    for name, scores in direct.items():
        assert out[f"eval/{name}/main_score"] == pytest.approx(scores[tasks.get_task(name).main_metric], abs=1e-6)
    assert out["eval/mean_main_score"] == pytest.approx(np.mean([d["main_score"] for d in direct.values()]))
    again = evaluator(params)  # a second evaluation: same fixed subsets, same numbers
    assert {k: v for k, v in again.items() if k != "eval/seconds"} == {
        k: v for k, v in out.items() if k != "eval/seconds"}


def test_sharded_params_give_the_same_scores(setup):
    params, tokenizer = setup
    mesh = sharding.make_mesh((1, -1, 1))
    abstract, logical = qmodel.abstract_params(CONFIG)
    sharded = jax.device_put(params, sharding.param_shardings(abstract, logical, mesh))
    assert len(sharded["embedding"].sharding.device_set) == 8
    evaluator = make_evaluator(eval_config(tasks=("STSBenchmark", "Banking77Classification")), CONFIG, tokenizer)
    got, ref = evaluator(sharded), evaluator(params)
    for key in ref:
        if key != "eval/seconds":
            assert got[key] == pytest.approx(ref[key], abs=1e-4), key


def test_bad_config_fails_at_setup(setup):
    _, tokenizer = setup
    with pytest.raises(KeyError, match="NoSuchTask"):
        make_evaluator(eval_config(tasks=("NoSuchTask",)), CONFIG, tokenizer)
    with pytest.raises(ValueError, match="vocabulary"):
        make_evaluator(eval_config(), CONFIG.replace(vocab_size=512), tokenizer)


@pytest.mark.slow
def test_trainer_logs_evaluations_and_plots_them(tmp_path):
    """configs/demo.py:stage1 for 2 steps with evaluation every step: eval rows in metrics.jsonl, and the plot."""
    import importlib.util
    import json
    import os

    from qzhou_jax.train import loop as train

    spec = importlib.util.spec_from_file_location("demo_config", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cfg = demo.get_config("stage1")
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every = 2, 1, 2
    cfg.export.at_end = False
    cfg.eval.update(dict(every=1, tasks=("STSBenchmark", "TrecQAReranking"), max_examples=8, batch_size=8,
                         max_length=32))
    workdir = str(tmp_path / "run")
    summary = train.run(cfg, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = [r for r in rows if "eval/mean_main_score" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(np.isfinite(r["eval/STSBenchmark/main_score"]) for r in evals)
    assert summary["plot"] == os.path.join(workdir, "training_curves.png") and os.path.getsize(summary["plot"]) > 10_000
