"""The one config loader of every command: a Python config file (`path[:arg]`, `get_config(arg)`) with
`--config.a.b=value` overrides applied exactly as on the command line. The config is locked: an override of a
key that does not exist is an error naming it."""
from __future__ import annotations

import argparse
from collections.abc import Sequence


def load_config(path: str, overrides: list[str] = ()):
    from absl import flags
    from ml_collections import config_flags

    argv = ["qzhou_jax", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """For argparse commands: (args, the `--config.a.b=value` overrides) -- any other unknown flag is an error."""
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, rest
