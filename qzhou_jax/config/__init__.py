"""Configuration: loader (the one loader of every command: a Python file with get_config() plus `--config.a.b=v`
overrides) | defaults (the one table of documented keys every config starts from, and `stages(...)`)."""
from qzhou_jax.config.loader import ConfigLoadError, load_config, parse_config_args, parse_with_overrides

__all__ = ["ConfigLoadError", "load_config", "parse_config_args", "parse_with_overrides"]
