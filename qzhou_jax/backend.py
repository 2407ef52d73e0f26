"""Which JAX backend a command starts: on a machine with no TPU and no GPU, the CPU one, without asking libtpu.

With libtpu installed (the test extra brings it, for the planner's compile-only TPU client), JAX tries the TPU backend
first on every machine, and on a CPU host libtpu prints an `INVALID_ARGUMENT ... TPU_WORKER_HOSTNAMES` block before
JAX falls back to the CPU: a new user reads it as a crash. JAX would end on the CPU anyway, so where no TPU chip is
on the PCI bus, no GPU device node exists and no GPU plugin is installed, `JAX_PLATFORMS=cpu` is set first. An
explicit JAX_PLATFORMS or JAX_FORCE_TPU_INIT wins. The planner still loads libtpu for its compile-only topologies
(`jax.experimental.topologies` does not need a TPU backend). Stdlib only: this runs before JAX is imported.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (as JAX's own hardware_utils finds them)
_GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _has_accelerator() -> bool:
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    if any(os.path.exists(node) for node in _GPU_DEVICE_NODES):
        return True
    # A GPU plugin (jax[cuda12], ROCm, ...) means the user wants it tried, whatever the device nodes say.
    return bool(importlib.metadata.entry_points(group="jax_plugins")) or \
        importlib.util.find_spec("jax_plugins") is not None


def cpu_without_accelerator() -> None:
    """Sets the CPU platform where no accelerator exists and nobody chose a platform; a no-op otherwise."""
    if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ or _has_accelerator():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported before the package (a script): its config read the environment already
        sys.modules["jax"].config.update("jax_platforms", "cpu")
