"""Accelerator specs: per-chip HBM and dense bf16 peak FLOP/s, keyed by the `device_kind` strings JAX reports.

One table for train.py's MFU and plan.py's memory budget and roofline. Kinds are as JAX reports them, on real
chips and for compile-only topologies (jax.experimental.topologies): a v5p reports "TPU v5", a v5e "TPU v5 lite",
a v6e "TPU v6 lite". Matching is exact first, then the longest table key that prefixes the reported kind (so
"TPU v5 lite" never falls to "TPU v5"), so an unknown kind is reported, never guessed.
"""
from __future__ import annotations

import dataclasses
import logging
import re

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str                 # marketing name, as topologies are called (v5p, h100, ...)
    hbm_bytes: float          # per chip (per device JAX sees)
    peak_flops: float         # dense bf16 FLOP/s per chip (per device)
    hbm_bandwidth: float      # bytes/s, for the memory side of the roofline
    ici_bandwidth: float = 0.0  # bytes/s per chip, all links (informational)


GiB = 2 ** 30
# Public spec sheets (cloud.google.com/tpu/docs/<version>, NVIDIA datasheets; dense, no sparsity).
CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1228e9, 2.4e11),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9, 2e11),
    "TPU v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 2e11),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2765e9, 6e11),
    "TPU v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 6e11),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1640e9, 4.5e11),
    "TPU v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, 4.5e11),
    "NVIDIA A100-SXM4-40GB": Chip("a100", 40 * GiB, 312e12, 1555e9),
    "NVIDIA A100-SXM4-80GB": Chip("a100", 80 * GiB, 312e12, 2039e9),
    "NVIDIA A100": Chip("a100", 80 * GiB, 312e12, 2039e9),
    "NVIDIA H100 80GB HBM3": Chip("h100", 80 * GiB, 989e12, 3350e9),
    "NVIDIA H100": Chip("h100", 80 * GiB, 989e12, 3350e9),
    "NVIDIA H200": Chip("h200", 141e9, 989e12, 4800e9),
    "NVIDIA B200": Chip("b200", 180e9, 2250e12, 8000e9),
}
# Topology-name prefixes (plan.py's --topology v5p-128 / h100x8) -> the kind JAX reports for that chip.
TOPOLOGY_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite",
                  "a100": "NVIDIA A100", "h100": "NVIDIA H100", "h200": "NVIDIA H200", "b200": "NVIDIA B200"}
# Chips per host for each TPU generation (v4/v5p count 2 TensorCores per chip in the topology name).
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}


def lookup(device_kind: str) -> Chip | None:
    """The table entry for a reported device kind, or None."""
    if device_kind in CHIPS:
        return CHIPS[device_kind]
    matches = [k for k in CHIPS if device_kind.startswith(k) and
               (len(device_kind) == len(k) or not device_kind[len(k)].isalnum())]
    return CHIPS[max(matches, key=len)] if matches else None


_warned: set[str] = set()


def peak_flops(device_kind: str, override: float = 0.0) -> float | None:
    """Dense bf16 peak per device for MFU: `override` when set, else the table. An unknown accelerator warns once
    that MFU is off and how to set it; a CPU (no meaningful peak, nothing to act on) says so once at info level."""
    if override:
        return float(override)
    chip = lookup(device_kind)
    if chip is None and device_kind not in _warned:
        _warned.add(device_kind)
        say = log.info if device_kind == "cpu" else log.warning
        say("unknown device kind %r: MFU is not reported; set --config.train.peak_flops_per_device="
            "<dense bf16 FLOP/s of one device> (or add the kind to qzhou_jax/train/hardware.py CHIPS)", device_kind)
    return chip.peak_flops if chip else None


def parse_topology(name: str) -> tuple[str, int]:
    """'v5p-128' -> ('v5p', 64 chips), 'v5e-256' -> ('v5e', 256), 'h100x8' -> ('h100', 8).

    TPU names count TensorCores for v4/v5p (two per chip) and chips for v5e/v6e, as Cloud TPU does."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    if m:
        gen, cores = m.group(1), int(m.group(2))
        per = CORES_PER_CHIP[gen]
        if cores % per:
            raise ValueError(f"topology {name!r}: {gen} counts {per} cores per chip, {cores} is not a multiple")
        return gen, cores // per
    m = re.fullmatch(r"(a100|h100|h200|b200)x(\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    raise ValueError(f"unknown topology {name!r}: expected e.g. v4-32, v5p-128, v5e-256, v6e-64, h100x8, h200x64")
