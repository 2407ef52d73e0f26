"""The one config loader of every command: a Python config file (`path[:arg]`, `get_config(arg)`) with
`--config.a.b=value` overrides applied exactly as on the command line. The config is locked: an override of a
key that does not exist is an error naming it."""
from __future__ import annotations


def load_config(path: str, overrides: list[str] = ()):
    from absl import flags
    from ml_collections import config_flags

    argv = ["qzhou_jax", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config
