"""Name and layout mapping between transformers' Qwen2 tensors and this project's Flax parameters.

One table serves both directions (loading HF weights, exporting trained weights), so they cannot drift apart.
HF stores Linear weights as [out, in]; Flax kernels are [in, out] with heads split out, so each entry carries a
pair of pure numpy functions `to_flax` / `to_hf`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from qzhou_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorMap:
    path: tuple[str, ...]          # Flax param path within a layer (or top level)
    hf_name: str                   # HF name; "{i}" stands for the layer index
    hf_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _identity(x):
    return x


def tensor_maps(config: ModelConfig) -> list[TensorMap]:
    d, f, h, kv, hd, v = (config.hidden_size, config.intermediate_size, config.num_heads, config.num_kv_heads,
                          config.head_size, config.vocab_size)

    def proj_in(heads):  # HF [heads*hd, d] <-> Flax [d, heads, hd]
        return (lambda w: w.T.reshape(d, heads, hd), lambda k: k.reshape(d, heads * hd).T)

    def bias(heads):
        return (lambda b: b.reshape(heads, hd), lambda b: b.reshape(heads * hd))

    layer = "layers.{i}."
    entries = [
        (("embedding",), "embed_tokens.weight", (v, d), (_identity, _identity)),
        (("norm", "scale"), "norm.weight", (d,), (_identity, _identity)),
        (("input_layernorm", "scale"), layer + "input_layernorm.weight", (d,), (_identity, _identity)),
        (("post_attention_layernorm", "scale"), layer + "post_attention_layernorm.weight", (d,),
         (_identity, _identity)),
        (("self_attn", "q_proj", "kernel"), layer + "self_attn.q_proj.weight", (h * hd, d), proj_in(h)),
        (("self_attn", "q_proj", "bias"), layer + "self_attn.q_proj.bias", (h * hd,), bias(h)),
        (("self_attn", "k_proj", "kernel"), layer + "self_attn.k_proj.weight", (kv * hd, d), proj_in(kv)),
        (("self_attn", "k_proj", "bias"), layer + "self_attn.k_proj.bias", (kv * hd,), bias(kv)),
        (("self_attn", "v_proj", "kernel"), layer + "self_attn.v_proj.weight", (kv * hd, d), proj_in(kv)),
        (("self_attn", "v_proj", "bias"), layer + "self_attn.v_proj.bias", (kv * hd,), bias(kv)),
        (("self_attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight", (d, h * hd),
         (lambda w: w.T.reshape(h, hd, d), lambda k: k.reshape(h * hd, d).T)),
        (("mlp", "gate_proj", "kernel"), layer + "mlp.gate_proj.weight", (f, d), (np.transpose, np.transpose)),
        (("mlp", "up_proj", "kernel"), layer + "mlp.up_proj.weight", (f, d), (np.transpose, np.transpose)),
        (("mlp", "down_proj", "kernel"), layer + "mlp.down_proj.weight", (d, f), (np.transpose, np.transpose)),
    ]
    return [TensorMap(path, name, shape, fwd, back) for path, name, shape, (fwd, back) in entries]


def flax_path(entry: TensorMap, config: ModelConfig, layer: int | None = None) -> tuple[str, ...]:
    """Where an entry lives in the params tree: scanned layers share one stacked leaf under 'layers'."""
    if not entry.per_layer:
        return entry.path
    if config.scan_layers:
        return ("layers",) + entry.path
    return (f"layers_{layer}",) + entry.path


def hf_names(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name an encoder checkpoint must hold, with its shape."""
    names = {}
    for entry in tensor_maps(config):
        layers = range(config.num_layers) if entry.per_layer else [None]
        for i in layers:
            names[entry.hf_name.format(i=i)] = entry.hf_shape
    return names
