"""The trainer end to end on the demo config: learning, config overrides, non-finite stop, stage hand-off."""
import json
import os

import numpy as np
import pytest

from qzhou_jax import checkpoint, train
from qzhou_jax.metrics_writer import read_metrics

STAGE1 = "configs/demo.py:stage1"


def demo(overrides=(), arg=STAGE1):
    base = ["--config.checkpoint.async_save=False", "--config.export.at_end=False", "--config.plot=False"]
    return train.load_config(arg, base + list(overrides))


def test_unknown_override_is_rejected_by_name():
    with pytest.raises(Exception, match="lrr"):
        train.load_config(STAGE1, ["--config.optim.lrr=1e-3"])
    cfg = train.load_config(STAGE1, ["--config.optim.lr=0.5", "--config.mesh.shape=(2,-1,1)"])
    assert cfg.optim.lr == 0.5 and tuple(cfg.mesh.shape) == (2, -1, 1)


def test_demo_learns_and_writes_metrics(tmp_path):
    cfg = demo(["--config.train.steps=30", "--config.train.log_every=1", "--config.checkpoint.every=100"])
    summary = train.run(cfg, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(1, 31))
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    for key in ("grad_norm", "learning_rate", "examples_per_s", "tokens_per_s", "tflops_per_s_per_device"):
        assert np.isfinite(rows[-1][key])
    assert any(k.startswith("loss/dataset/") for k in rows[-1])
    assert os.listdir(tmp_path / "tensorboard")
    assert summary["step"] == 30


def test_nonfinite_run_stops_with_clear_message(tmp_path):
    cfg = demo(["--config.train.steps=10", "--config.train.log_every=1", "--config.train.max_consecutive_nonfinite=2",
                "--config.optim.lr=1e30", "--config.optim.warmup_steps=1", "--config.optim.grad_clip=0"])
    with pytest.raises(train.NonFiniteError, match="non-finite"):
        train.run(cfg, str(tmp_path))


@pytest.mark.slow
def test_both_stages_hand_off(tmp_path):
    cfg = train.load_config("configs/demo.py", [
        "--config.stages.stage1.train.steps=4", "--config.stages.stage2.train.steps=4",
        "--config.stages.stage1.export.at_end=False", "--config.stages.stage2.export.at_end=True",
        "--config.stages.stage1.plot=False", "--config.stages.stage2.plot=False"])
    summary = train.run(cfg, str(tmp_path))
    params1, _, _ = checkpoint.restore_params(str(tmp_path / "stage1"))
    meta2 = json.loads((tmp_path / "stage2" / "checkpoints" / "4" / "meta" / "metadata").read_text()) \
        if (tmp_path / "stage2" / "checkpoints" / "4" / "meta" / "metadata").exists() else None
    assert summary["stages"]["stage2"]["step"] == 4
    assert os.path.exists(summary["export_dir"])
    rows = read_metrics(str(tmp_path / "stage2"))
    assert {"loss/pair_score", "loss/classification"} & set().union(*rows) or len(rows) > 0
    assert params1["embedding"].shape[0] == 151665
