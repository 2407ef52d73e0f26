"""Moved to qzhou_jax/config/defaults.py (issue 23). This alias keeps `from qzhou_jax.config_base import base` in
existing config files working for one release: it is the same module object."""
import sys

from qzhou_jax.config import defaults

sys.modules[__name__] = defaults
