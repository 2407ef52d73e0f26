"""The one config loader of every command: a Python config file (`path[:arg]`, `get_config(arg)`) with
`--config.a.b=value` overrides applied exactly as on the command line. The config is locked: an override of a
key that does not exist is an error naming it."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from qzhou_jax.cli_errors import UsageError


class ConfigLoadError(UsageError):
    """The config file or an override is wrong; the message names which and why."""


def _innermost(e: BaseException) -> str:
    while e.args and isinstance(e.args[0], BaseException):  # ml_collections wraps a KeyError in an AttributeError
        e = e.args[0]
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    return text.replace("\n", " ")


def load_config(path: str, overrides: list[str] = ()):
    from absl import flags
    from ml_collections import config_flags

    argv = ["qzhou_jax", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:  # a bad value, or the file itself failed (its traceback is in the message)
        raise ConfigLoadError(str(e)) from e
    except (KeyError, AttributeError) as e:  # an override of a key the config does not have
        raise ConfigLoadError(f"{path}: no such key in the overrides {list(overrides)}: {_innermost(e)}"
                              f"{_staged_hint(path, overrides)}") from e
    return values.config


def _staged_hint(path: str, overrides: Sequence[str]) -> str:
    """A staged config (configs/demo.py, smollm2.py) holds its keys under stages.<name>: say so when a plain
    `--config.model.x` missed them, the commonest mistake with such a file."""
    if not overrides or all(o.startswith("--config.stages.") for o in overrides):
        return ""
    try:
        stages = load_config(path).get("stages")
    except ConfigLoadError:
        return ""
    if not stages:
        return ""
    names = list(stages)
    return (f". {path} is a staged config (stages {', '.join(names)}): set a stage's key as "
            f"--config.stages.{names[0]}.<key>, or load one stage as {path.split(':')[0]}:{names[0]} where the file "
            f"takes a stage argument")


def parse_config_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """For every command: (args, the config loaded from `args.config` with the `--config.a.b=value` overrides);
    a bad config or override exits through `parser.error` (usage, the message, exit status 2)."""
    args, overrides = parse_with_overrides(parser, argv)
    try:
        return args, load_config(args.config, overrides)
    except ConfigLoadError as e:
        parser.error(str(e))


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """For argparse commands: (args, the `--config.a.b=value` overrides) -- any other unknown flag is an error."""
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, rest
