"""Config mistakes are one line naming the field, before anything compiles; resuming lists changed keys and
refuses a changed state structure, while a changed mesh resumes."""
import os
import subprocess
import sys

import pytest

from qzhou_jax import checkpoint, config_check, train
from qzhou_jax.config import load_config
from tests.trained_workdir import copy_of, demo_config, trained_workdir  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override,field", [
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"), ("optim.lr=0.0", "optim.lr"),
    ("optim.lr=-0.001", "optim.lr"), ("optim.grad_accum_steps=0", "optim.grad_accum_steps"),
    ("checkpoint.every=0", "checkpoint.every"), ("train.log_every=0", "train.log_every"),
    ("data.batch_size.retrieval=12", "data.batch_size.retrieval"),  # 8 batch devices on (-1, 1, 1)
    ("optim.grad_accum_steps=7", "train.steps"),  # 60 steps are not whole updates of 7
    ("data.max_skipped_fraction=1.5", "data.max_skipped_fraction"),
    ("mesh.shape=(3,-1,1)", "mesh.shape"),
])
def test_each_mistake_names_its_field(override, field):
    cfg = load_config("configs/demo.py:stage1", [f"--config.{override}"])
    with pytest.raises(config_check.ConfigError) as err:
        config_check.check(cfg, device_count=8)
    assert str(err.value).startswith(f"config.{field} = ") and "\n" not in str(err.value)


def test_batch_not_divisible_by_hosts():
    cfg = load_config("configs/demo.py:stage1", ["--config.mesh.shape=(2,1,-1)"])  # 2 batch devices
    config_check.check(cfg, device_count=6, process_count=2)
    with pytest.raises(config_check.ConfigError, match=r"data.batch_size.retrieval = 16: .* 3 hosts"):
        config_check.check(cfg, device_count=6, process_count=3)


def test_a_stage_2_mistake_stops_the_run_before_stage_1_trains(tmp_path):
    cfg = load_config("configs/demo.py", ["--config.stages.stage2.data.batch_size.pair_score=30"])
    with pytest.raises(config_check.ConfigError, match=r"^config.stages.stage2.data.batch_size.pair_score = 30"):
        train.run(cfg, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_stage2_config_needs_init_from():
    with pytest.raises(config_check.ConfigError, match="init_from"):
        config_check.check(load_config("configs/stage2.py", []), device_count=8)
    config_check.check(load_config("configs/stage2.py", ["--config.init_from=base"]), device_count=8)
    config_check.check(load_config("configs/stage2.py", ["--config.init_from=/runs/stage1"]), device_count=8)


def test_keep_best_needs_evaluations_at_checkpoints():
    cfg = load_config("configs/demo.py:stage1", ["--config.checkpoint.keep_best=True", "--config.checkpoint.every=20",
                                                 "--config.checkpoint.best_metric=eval/SciFact/main_score"])
    with pytest.raises(config_check.ConfigError, match=r"^config.eval.every = 30: must be a multiple"):
        config_check.check(cfg, device_count=8)


def test_cli_prints_one_line_and_compiles_nothing(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "qzhou_jax.train", "--config=configs/demo.py:stage1",
                           f"--workdir={tmp_path}", "--config.optim.lr=0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "error: config.optim.lr = 0.0: must be a positive number" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not os.listdir(tmp_path)


def test_resume_refuses_a_changed_optimizer_structure(trained_workdir, tmp_path):
    workdir = copy_of(trained_workdir, tmp_path)
    before = sorted(os.listdir(checkpoint.checkpoint_dir(str(workdir))))
    with pytest.raises(config_check.ConfigError, match=r"^config.optim.grad_clip = 'changed': cannot resume"):
        train.run(demo_config("--config.train.steps=6", "--config.optim.grad_clip=0"), str(workdir))
    assert sorted(os.listdir(checkpoint.checkpoint_dir(str(workdir)))) == before  # nothing moved aside


def test_resume_on_another_mesh_lists_the_changes(trained_workdir, tmp_path, capsys):
    workdir = copy_of(trained_workdir, tmp_path)
    capsys.readouterr()
    summary = train.run(demo_config("--config.train.steps=5", "--config.mesh.shape=(2,2,2)"), str(workdir))
    out = capsys.readouterr().out
    assert "resuming with 2 changed config key(s)" in out and "mesh.shape: [-1, 1, 1] -> [2, 2, 2]" in out
    assert "resuming from checkpoint step 4" in out and summary["step"] == 5
