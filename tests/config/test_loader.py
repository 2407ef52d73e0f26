"""qzhou_jax/config/loader.py: the one config loader and the argparse front every command shares."""
import argparse

import pytest

from qzhou_jax.cli import plan, train
from qzhou_jax.config import ConfigLoadError, load_config, parse_config_args

DEMO = "configs/demo.py:stage1"


def test_overrides_apply_with_the_config_types():
    cfg = load_config(DEMO, ["--config.optim.lr=0.25", "--config.data.eta=0.5", "--config.mesh.shape=(2,2,2)"])
    assert cfg.optim.lr == 0.25 and cfg.data.eta == 0.5 and tuple(cfg.mesh.shape) == (2, 2, 2)
    assert load_config(DEMO).optim.lr == 1e-3  # nothing leaks from one load into the next


@pytest.mark.parametrize("override, words", [
    ("--config.optim.lrr=1", ["lrr", 'did you mean "lr"']),
    ("--config.nope.x=1", ["nope"]),
    ("--config.optim.lr=abc", ["--config.optim.lr=abc", "could not convert"]),
])
def test_a_bad_override_is_one_clear_error(override, words):
    with pytest.raises(ConfigLoadError) as err:
        load_config(DEMO, [override])
    for word in words:
        assert word.lower() in str(err.value).lower(), str(err.value)


def test_a_plain_override_on_a_staged_config_names_the_stages():
    with pytest.raises(ConfigLoadError) as err:
        load_config("configs/demo.py", ["--config.model.dtype=float32"])
    assert "staged config (stages stage1, stage2)" in str(err.value)
    assert "--config.stages.stage1.<key>" in str(err.value), str(err.value)
    with pytest.raises(ConfigLoadError) as err:  # a single stage's file: no such hint
        load_config(DEMO, ["--config.nope.x=1"])
    assert "staged" not in str(err.value)


def test_commands_exit_with_usage_and_the_message(capsys):
    parser = argparse.ArgumentParser(prog="cmd")
    parser.add_argument("--config", required=True)
    args, cfg = parse_config_args(parser, ["--config", DEMO, "--config.train.steps=7"])
    assert args.config == DEMO and cfg.train.steps == 7
    with pytest.raises(SystemExit) as stop:
        parse_config_args(parser, ["--config", DEMO, "--steps=7"])  # not a config override: argparse's error
    assert stop.value.code == 2 and "unrecognized arguments: --steps=7" in capsys.readouterr().err
    # The trainer and the planner parse before touching JAX: a misspelled key stops them at once.
    for main, extra in ((train.main, ["--workdir", "/nonexistent/never-made"]), (plan.main, ["--topology", "v5p-8"])):
        with pytest.raises(SystemExit) as stop:
            main(["--config", DEMO, *extra, "--config.optim.lrr=1"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "lrr" in err and "usage:" in err, err
