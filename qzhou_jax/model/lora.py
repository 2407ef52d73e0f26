"""LoRA (Hu et al. 2021) on the projections of the Qwen2 encoder, with peft's conventions so adapters round-trip.

A targeted projection (config.lora_targets, peft's module names: q_proj k_proj v_proj o_proj gate_proj up_proj
down_proj) computes `x W + (alpha / r) * dropout(x) A B` with the base W frozen (model/qwen2.py `Projection`):
- `lora_a` [*in axes, r]: peft's default init (`init_lora_weights=True`): torch's kaiming_uniform_(a=sqrt(5)) on
  lora_A.weight [r, in], i.e. U(-1/sqrt(in), 1/sqrt(in));
- `lora_b` [r, *out axes]: zeros, so a fresh adapter leaves the model exactly as it was;
- scaling alpha / r (peft's default; rsLoRA's alpha / sqrt(r) is not offered), dropout on the adapter's input only.
Both carry the kernel's logical axis names plus `lora_rank` (replicated by sharding.py), so A shards like the
kernel's input side and B like its output side.

`merge` folds the adapters into the kernels (W + (alpha / r) A B, computed in float32) and drops them: what
checkpoint.restore_params, export and every consumer of a finished run see, so serving is unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

ADAPTER_LEAVES = ("lora_a", "lora_b")


def init_a(fan_in: int):
    """peft's default lora_A init: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)
    return init


def _key(entry) -> str:
    return str(getattr(entry, "key", entry))


def is_adapter_path(path) -> bool:
    return bool(path) and _key(path[-1]) in ADAPTER_LEAVES


def split_adapters(params) -> tuple[dict, dict]:
    """(adapters only, everything else): nested dicts pruned of empty branches (works on boxed trees too)."""
    def walk(node):
        if not isinstance(node, dict):
            return None
        adapters, rest = {}, {}
        for key, value in node.items():
            if key in ADAPTER_LEAVES:
                adapters[key] = value
            elif isinstance(value, dict):
                a, r = walk(value)
                if a:
                    adapters[key] = a
                if r:
                    rest[key] = r
            else:
                rest[key] = value
        return adapters, rest
    return walk(dict(params))


def join(a: dict, b: dict) -> dict:
    """Deep union of two nested dicts with disjoint leaves (split_adapters' inverse)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = join(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def delta(kernel_shape, a, b, scale: float):
    """scale * A B in the kernel's shape, float32. Shapes: kernel [*lead, *in, *out], a [*lead, *in, r],
    b [*lead, r, *out] (lead: the stacked layer axis of scanned params, or nothing)."""
    lead = a.ndim + b.ndim - 2 - len(kernel_shape)
    r = a.shape[-1]
    a2 = a.astype(jnp.float32).reshape(a.shape[:lead] + (-1, r))
    b2 = b.astype(jnp.float32).reshape(b.shape[:lead] + (r, -1))
    return (jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST) * scale).reshape(kernel_shape)


def merge(params, config) -> dict:
    """Params with every adapter folded into its kernel (W + alpha/r A B, in float32, cast back) and removed."""
    scale = config.lora_scale

    def walk(node):
        if not isinstance(node, dict):
            return node
        if "lora_a" in node:
            out = {k: v for k, v in node.items() if k not in ADAPTER_LEAVES}
            kernel = node["kernel"]
            out["kernel"] = (kernel.astype(jnp.float32) + delta(kernel.shape, node["lora_a"], node["lora_b"], scale)
                             ).astype(kernel.dtype)
            return out
        return {k: walk(v) for k, v in node.items()}
    return walk(dict(params))


def count(params: Any) -> int:
    adapters, _ = split_adapters(params)
    return sum(int(x.size) for x in jax.tree.leaves(adapters))
