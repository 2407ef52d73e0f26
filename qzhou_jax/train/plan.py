"""Ahead-of-time planner: compile the real train step for a TPU / GPU topology on this host and report, per chip,
memory against HBM, FLOPs, a roofline step time, tokens/s and days at an assumed MFU, before renting the pod.

    python -m qzhou_jax.plan --config configs/stage1.py --topology v5p-128 [--mfu 0.4] [--hbm-gib 0] \
        [--config.train.gradcache_chunks=8 ...]

TPU topologies (v4-N, v5p-N, v5e-N, v6e-N; N as Cloud TPU counts it) compile through libtpu's compile-only
client (`pip install -e .[tpu]`; no TPU needed). GPU meshes (h100x8, h200x64, ...) need a CUDA backend that can
compile without a device; where there is none the planner says so and stops.

Every task type the config's data mixes is compiled at its worst-case shapes (global batch size, the largest
candidate count and the longest length bucket of its datasets) with the same abstract state, shardings and step
function as train.py (`train.build_state_and_steps`). FLOPs: XLA's cost_analysis counts a while loop's body once,
so the scanned layers (and GradCache's chunk loops) are undercounted; the planner therefore counts model FLOPs
analytically (train_step.flops_per_token, the same count as train.py's MFU) and executed FLOPs as model FLOPs
times the recompute of remat (one more forward) and GradCache (one more forward); XLA's figure is shown beside.
Exit status 2 when a step does not fit the HBM budget, also when the TPU compiler itself refuses it for lack of
HBM (the report then gives the compiler's count of the temporaries and the state's and batch's shards per chip).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import Any

import jax

from qzhou_jax import batch as batch_lib, cli_errors
from qzhou_jax.train import hardware
from qzhou_jax.data.spec import DataConfig
from qzhou_jax.train.step import batch_flops, mesh_context

log = logging.getLogger("qzhou_jax.plan")
GiB = 2 ** 30
LEVERS = ("--config.train.gradcache_chunks=K (activation memory flat in the batch; K with batch/K a multiple of "
          "the batch devices)",
          "--config.model.remat_policy=full (recompute every layer in the backward pass)",
          "--config.mesh.shape (more fsdp shards params/optimizer further; a tensor axis splits activations)",
          "packing (fewer padded tokens per step), or shorter max_len_passage / smaller batch")


class PlanError(cli_errors.RunFailed):
    """The topology cannot be compiled for here (no backend), or a step does not fit."""


# ------------------------------------------------------------------------------------------------ topology
def _near_cube(chips: int, dims: int) -> str:
    """The Cloud TPU slice shape for `chips` (powers of two): 4 -> 2x2x1, 16 -> 2x2x4, 64 -> 4x4x4, 128 -> 4x4x8;
    2D: 8 -> 2x4, 256 -> 16x16."""
    if chips & (chips - 1):
        raise PlanError(f"{chips} chips: only power-of-two slices are supported")
    shape = [1] * dims
    i = 0
    while math.prod(shape) < chips:
        shape[i % dims] *= 2
        i += 1
    return "x".join(map(str, sorted(d for d in shape if d > 1) + [d for d in shape if d == 1]))


def topology_devices(topology: str) -> tuple[list[Any], hardware.Chip]:
    """Compile-only devices of a named topology, and the chip's specs (from the kind JAX reports)."""
    gen, chips = hardware.parse_topology(topology)
    if gen in hardware.CORES_PER_CHIP:
        from jax.experimental import topologies
        # Compile-only: no chip to guard, so several planners (or tests) may load libtpu at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        name = f"{gen}:{_near_cube(chips, 3 if gen in ('v4', 'v5p') else 2)}"
        try:
            devices = list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
        except Exception as e:  # noqa: BLE001 - libtpu missing or refusing: say what to install
            raise PlanError(f"cannot build TPU topology {name!r} ({type(e).__name__}: {e}); compiling for TPU "
                            f"needs libtpu: `pip install -e .[tpu]` (jax[tpu]=={jax.__version__})") from e
    else:
        try:
            from jax.experimental import topologies
            devices = list(topologies.get_topology_desc(platform="cuda", topology_name=topology).devices)
        except Exception as e:  # noqa: BLE001
            raise PlanError(f"GPU topology {topology!r}: this host's JAX cannot compile for CUDA without a device "
                            f"({type(e).__name__}: {e}). Run the planner on one GPU host of that type with "
                            f"jax[cuda12], or plan the same mesh on a TPU topology for memory shapes.") from e
    kind = devices[0].device_kind
    chip = hardware.lookup(kind)
    if chip is None:
        raise PlanError(f"device kind {kind!r} of {topology} is not in qzhou_jax/train/hardware.py CHIPS")
    return devices, chip


# ----------------------------------------------------------------------------------------------- shapes
def task_shapes(cfg) -> dict[str, dict[str, int]]:
    """Worst-case batch shapes per task type of the config's mixture (the pipeline pads to at most max_len)."""
    data = DataConfig.from_config(cfg.data)
    shapes: dict[str, dict[str, int]] = {}
    for spec in data.datasets:
        s = shapes.setdefault(spec.task, dict(batch_size=int(data.batch_size[spec.task]), num_candidates=0,
                                              query_len=0, passage_len=0))
        s["num_candidates"] = max(s["num_candidates"], spec.num_candidates)
        s["query_len"] = max(s["query_len"], spec.max_len_query)
        s["passage_len"] = max(s["passage_len"], spec.max_len_passage)
    return shapes


def executed_flops_factor(remat_policy: str, gradcache_chunks: int) -> float:
    """Executed / model FLOPs: model = forward + backward (3 forwards); full remat adds a forward, GradCache's
    embedding pass adds a forward. Partial policies (dots) save the matmuls, which dominate: counted as none."""
    forwards = 3.0 + (remat_policy == "full") + (gradcache_chunks > 1)
    return forwards / 3.0


@dataclasses.dataclass
class TaskPlan:
    task: str
    shapes: dict[str, int]
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    total_bytes: int
    model_flops: float       # whole step, all chips
    executed_flops: float    # with recompute
    xla_flops: float | None  # cost_analysis, per chip (undercounts loops)
    tokens: int              # padded tokens per step (worst case)
    roofline_s: float        # executed FLOPs at peak, per chip
    step_s: float            # model FLOPs at the assumed MFU
    fits: bool
    refused: str = ""        # the TPU compiler's own refusal (temporaries over HBM), when it refused


# XLA's TPU compiler refuses a program whose temporaries exceed the chip's HBM, e.g. "RESOURCE_EXHAUSTED: Ran out of
# memory on HBM, the total memory required for HLO temporaries (19.18G) exceeds available HBM (15.75G)."
_REFUSAL = re.compile(r"RESOURCE_EXHAUSTED.*?HLO temporaries \(([\d.]+)([KMGT])\)", re.S)


def refused_temporaries(message: str) -> int | None:
    """The temporaries (bytes) the TPU compiler says it needed when it refused for lack of HBM; None otherwise."""
    found = _REFUSAL.search(message)
    if not found:
        return None
    return int(float(found.group(1)) * 2 ** (10 * "KMGT".index(found.group(2)) + 10))


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of an abstract (ShapeDtypeStruct with sharding) tree: the largest shard of each leaf."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
        total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
    return total


def _compile_memory(step, state, batch, mesh) -> tuple[Any, dict, str]:
    """(compiled or None, {argument, output, alias, temp} bytes per chip, refusal). When the TPU compiler refuses
    for lack of HBM, the plan still reports: temporaries as the compiler counted them, the state and batch from
    their shardings (the state is donated: output = alias = state)."""
    try:
        with mesh_context(mesh):
            compiled = step.jitted_for(batch).lower(state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        temp = refused_temporaries(str(e))
        if temp is None:
            raise
        state_bytes = per_chip_bytes(state)
        mem = dict(argument=state_bytes + per_chip_bytes(batch), output=state_bytes, alias=state_bytes, temp=temp)
        return None, mem, str(e).splitlines()[0][:300]
    m = compiled.memory_analysis()
    return compiled, dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                          alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes), ""


def plan(cfg, topology: str, *, mfu: float = 0.4, hbm_gib: float = 0.0, devices=None, chip=None) -> dict:
    """Compiles each task's step for `topology` and returns the report (see module docstring). Tests call this.
    `devices`/`chip` may be given instead of being built from the topology name."""
    from qzhou_jax import sharding  # train imports the data pipeline; only needed here
    from qzhou_jax.train import loop as train  # train imports the data pipeline; only needed here

    if devices is None:
        devices, chip = topology_devices(topology)
    model_config = train.build_model_config(cfg)
    mesh = sharding.make_mesh(tuple(cfg.mesh.shape), devices)
    shapes = task_shapes(cfg)
    built = train.build_state_and_steps(cfg, model_config, mesh, list(shapes))
    rules, state, step = built.rules, built.abstract_state, built.step
    budget = hbm_gib * GiB if hbm_gib else chip.hbm_bytes
    chunks = int(cfg.train.gradcache_chunks or 0)
    factor = executed_flops_factor(model_config.remat_policy, chunks)
    plans = []
    for task, s in sorted(shapes.items()):
        batch = batch_lib.abstract(task, rules=rules, **s)
        compiled, mem, refused = _compile_memory(step, state, batch, mesh)
        cost = compiled.cost_analysis() if compiled is not None else None
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        b, c, la, lc = s["batch_size"], s["num_candidates"], s["query_len"], s["passage_len"]
        tokens_anchor, tokens_cand = b * la, b * c * lc
        model_flops = batch_flops(model_config, {"anchor_ids": (b, la), "cand_ids": (b, c, lc)}, tokens_anchor,
                                  tokens_cand)
        total = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
        plans.append(TaskPlan(
            task=task, shapes=s, argument_bytes=mem["argument"], output_bytes=mem["output"],
            alias_bytes=mem["alias"], temp_bytes=mem["temp"], total_bytes=total, refused=refused,
            model_flops=model_flops, executed_flops=model_flops * factor,
            xla_flops=float(cost.get("flops")) if cost and cost.get("flops") is not None else None,
            tokens=tokens_anchor + tokens_cand, roofline_s=model_flops * factor / len(devices) / chip.peak_flops,
            step_s=model_flops / len(devices) / (chip.peak_flops * mfu), fits=total <= budget and not refused))
    steps_total = int(cfg.train.steps)
    return dict(topology=topology, device_kind=devices[0].device_kind, chips=len(devices), mesh=dict(mesh.shape),
                hbm_bytes=budget, peak_flops=chip.peak_flops, mfu=mfu, steps=steps_total,
                model=dict(params=model_config.num_params(), layers=model_config.num_layers,
                           remat=model_config.remat_policy, dtype=model_config.dtype, gradcache_chunks=chunks),
                dropped_rules=list(rules.dropped), tasks=[dataclasses.asdict(p) for p in plans],
                fits=all(p.fits for p in plans))


# ------------------------------------------------------------------------------------------------- report
def format_report(report: dict) -> str:
    g = lambda x: f"{x / GiB:7.2f} GiB"  # noqa: E731
    m = report["model"]
    lines = [f"{report['topology']}: {report['chips']} x {report['device_kind']!r}, mesh {report['mesh']}, "
             f"HBM budget {report['hbm_bytes'] / GiB:.2f} GiB/chip, peak {report['peak_flops'] / 1e12:.0f} "
             f"TFLOP/s/chip",
             f"model {m['params'] / 1e9:.2f}B params, {m['layers']} layers, {m['dtype']}, remat {m['remat']}, "
             f"GradCache chunks {m['gradcache_chunks']}"]
    if report["dropped_rules"]:
        lines.append("replicated (rule does not divide): " + "; ".join(report["dropped_rules"]))
    for t in report["tasks"]:
        s = t["shapes"]
        tokens_per_s = t["tokens"] / t["step_s"]
        lines += [
            f"-- {t['task']}: batch {s['batch_size']} x (query {s['query_len']} + {s['num_candidates']} x passage "
            f"{s['passage_len']}) = {t['tokens']:,} tokens/step (worst case, all padded)",
            f"   per chip: arguments {g(t['argument_bytes'])}  outputs {g(t['output_bytes'])}  (donated "
            f"{g(t['alias_bytes'])})  temporaries {g(t['temp_bytes'])}",
            f"   per chip: total {g(t['total_bytes'])} of {g(report['hbm_bytes'])}  "
            f"{'fits' if t['fits'] else 'OVER BUDGET'} ({t['total_bytes'] / report['hbm_bytes']:.0%})",
            *([f"   the TPU compiler refused it (temporaries are its count; arguments and outputs are the state's "
               f"and batch's shards): {t['refused']}"] if t.get("refused") else []),
            f"   FLOPs/step: model {t['model_flops']:.3e}, executed {t['executed_flops']:.3e} (remat/GradCache "
            f"recompute); XLA cost_analysis per chip "
            f"{'n/a' if t['xla_flops'] is None else format(t['xla_flops'], '.3e')} (counts loop bodies once)",
            f"   roofline (executed FLOPs at peak) {t['roofline_s']:.3f} s/step; at MFU {report['mfu']:.0%}: "
            f"{t['step_s']:.3f} s/step, {tokens_per_s:,.0f} tokens/s, "
            f"{report['steps'] * t['step_s'] / 86400:.2f} days for {report['steps']:,} steps of this task",
        ]
    if not report["fits"]:
        lines.append("OVER BUDGET. Levers: " + "; ".join(LEVERS))
    return "\n".join(lines)
