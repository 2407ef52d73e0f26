"""Every documented key (config_base's tables) is overridable on every shipped config, and the dataclasses that
also carry defaults (LossConfig, DataConfig) agree with the one table."""
import dataclasses

import pytest

from qzhou_jax import losses
from qzhou_jax.config import defaults as config_base
from qzhou_jax.config import load_config
from qzhou_jax.data.spec import DataConfig

# Every shipped training config, and the prefix its blocks live under.
SHIPPED = [("configs/demo.py", "stages.stage1."), ("configs/demo.py", "stages.stage2."),
           ("configs/demo.py:stage1", ""), ("configs/demo.py:stage2", ""), ("configs/stage1.py", ""),
           ("configs/stage2.py", ""), ("configs/real_small.py", "stages.stage2."), ("configs/real_small.py:stage1", "")]


def documented_keys():
    """(dotted key, type of its default) for every leaf of base(), from the tables, not from a shipped config."""
    out = []
    for block, table in config_base.BLOCKS.items():
        for key, default in table.items():
            if key == "datasets":
                continue  # a list of dataset dicts, set in each config's file
            if isinstance(default, dict):
                out += [(f"{block}.{key}.{k}", type(v)) for k, v in default.items()]
            elif isinstance(default, tuple) and len(default) == 2 and default[0] is None:
                out.append((f"{block}.{key}", default[1]))
            else:
                out.append((f"{block}.{key}", type(default)))
    out += [(k, type(v)) for k, v in config_base.TOP.items()]
    out.append(("mesh.shape", tuple))
    return out


def new_value(kind):
    """A (command-line text, parsed value) pair of `kind` that no default uses."""
    return {bool: ("False", False), int: ("7", 7), float: ("0.72", 0.72), str: ("x", "x"),
            tuple: ("(2,4,1)", (2, 4, 1))}[kind]


def test_the_table_covers_what_the_brief_names():
    keys = dict(documented_keys())
    assert {"data.prompt_sep", "data.num_threads", "data.eta", "data.max_skipped_fraction", "optim.grad_accum_steps",
            "loss.matryoshka_dims", "train.stall_steps"} <= set(keys)


@pytest.mark.parametrize("path,prefix", SHIPPED)
def test_every_documented_key_overrides_on_every_shipped_config(path, prefix):
    keys = documented_keys()
    overrides = [f"--config.{prefix}{key}={new_value(kind)[0]}" for key, kind in keys]
    overrides.append(f"--config.{prefix}data.prompt_sep=")  # an empty string, as the README shows
    cfg = load_config(path, overrides)
    for key, kind in keys:
        node = cfg
        for part in (prefix + key).split("."):
            node = node[part]
        expected = "" if key == "data.prompt_sep" else new_value(kind)[1]
        assert (tuple(node) if isinstance(node, (list, tuple)) else node) == expected, key


def test_data_example_config_carries_the_data_keys():
    cfg = load_config("configs/data_example.py", ["--config.data.num_threads=4", "--config.data.prompt_sep="])
    assert cfg.data.num_threads == 4 and cfg.data.prompt_sep == ""


def test_loss_defaults_agree_with_loss_config():
    table = {k: config_base.plain_default(v) for k, v in config_base.LOSS.items()}
    assert table == {f.name: f.default for f in dataclasses.fields(losses.LossConfig)}


def test_data_defaults_come_from_the_table():
    spec_defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                     for f in dataclasses.fields(DataConfig) if f.name != "datasets"}
    table = {k: config_base.plain_default(v) for k, v in config_base.DATA.items() if k != "datasets"}
    assert {k: tuple(v) if isinstance(v, tuple) else v for k, v in spec_defaults.items()} == table
