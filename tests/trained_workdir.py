"""A session-wide demo workdir trained once (4 steps, checkpoints at 2 and 4): tests copy it, then damage or
resume their copy. Import the fixture into a test module with `from tests.trained_workdir import trained_workdir`."""
import shutil

import pytest

from qzhou_jax.train import loop as train

COMMON = ["--config.train.log_every=1", "--config.checkpoint.every=2", "--config.checkpoint.keep=3",
          "--config.export.at_end=False", "--config.plot=False", "--config.eval.tasks=()",
          "--config.checkpoint.async_save=False"]


def each_stage(*settings, stages=(1, 2)):
    """`--config.stages.stageN.<setting>` for every stage of configs/demo.py's two-stage run."""
    return [f"--config.stages.stage{i}.{s}" for i in stages for s in settings]


def demo_config(*overrides):
    return train.load_config("configs/demo.py:stage1", COMMON + list(overrides))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train.run(demo_config("--config.train.steps=4"), str(workdir))
    return workdir


def copy_of(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    (target / "done.json").unlink(missing_ok=True)
    return target
