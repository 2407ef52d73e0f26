"""Stream HF safetensors into sharded Flax parameters.

Tensors are read one at a time (`safe_open(...).get_slice`, memory-mapped) and each host copies only the slices
its own devices hold into per-device buffers, so a 7B checkpoint loads onto a multi-host mesh without any host
holding the whole model. Names, shapes and the full key set are checked against the config before anything is
read, and every problem names the tensor.

Memory: the resident set after loading is the weights (in param_dtype) and no more; the peak adds about two of the
largest tensor. Three things made it 2-3x before: (1) the memory maps stayed open for the whole load, so every
file page read stayed resident; a file is now opened per tensor and closed after it; (2) an `astype` copy of each
tensor before copying it into the shard buffers (the buffer assignment casts by itself); (3) numpy's 16-byte
aligned buffers, which `jax.device_put` on CPU copies (XLA wants 64-byte alignment) while 64-byte aligned ones
it adopts without a copy (on accelerators the host buffer is freed after the transfer either way).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return it)
import numpy as np
from safetensors import safe_open

from qzhou_jax.hf import mapping
from qzhou_jax.model.config import ModelConfig

log = logging.getLogger(__name__)

# Tensors a Qwen2ForCausalLM checkpoint holds that an encoder does not use.
IGNORED = ("lm_head.weight",)


class CheckpointError(ValueError):
    """A checkpoint does not match the model config; the message names the tensor."""


def weight_files(model_dir: str) -> dict[str, str]:
    """HF tensor name -> safetensors file, for a single-file or sharded (index.json) checkpoint."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(model_dir, file) for name, file in weight_map.items()}
    single = os.path.join(model_dir, "model.safetensors")
    if not os.path.exists(single):
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    with safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}


def _strip_prefix(names: dict[str, str]) -> tuple[dict[str, str], str]:
    """Qwen2ForCausalLM checkpoints prefix the encoder with 'model.'; Qwen2Model ones do not."""
    prefix = "model." if any(n.startswith("model.") for n in names) else ""
    return {n[len(prefix):] if n.startswith(prefix) else n: n for n in names}, prefix


class _Reader:
    """Hands out tensors by HF name, opening the file (a memory map) per call so read pages do not stay resident."""

    def __init__(self, files: dict[str, str]):
        self._files = files

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(self._files[name], framework="numpy") as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        with safe_open(self._files[name], framework="numpy") as f:
            return f.get_slice(name)[:]


def check_checkpoint(model_dir: str, config: ModelConfig) -> tuple[dict[str, str], _Reader]:
    """Validates names and shapes; returns {expected HF name -> stored name} and a reader."""
    files = weight_files(model_dir)
    stored, _ = _strip_prefix(files)
    expected = mapping.hf_names(config)
    if "embed_tokens.weight" not in stored and config.tie_word_embeddings and "lm_head.weight" in stored:
        stored["embed_tokens.weight"] = stored.pop("lm_head.weight")  # tied: either copy serves
    reader = _Reader(files)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected) - set(IGNORED))
    if missing:
        raise CheckpointError(f"{model_dir}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                              f" ({len(missing)} in all) for config with {config.num_layers} layers")
    if unexpected:
        raise CheckpointError(f"{model_dir}: unexpected tensor(s) {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)")
    for name, shape in expected.items():
        found = reader.shape(stored[name])
        if found != tuple(shape):
            raise CheckpointError(f"{model_dir}: tensor {stored[name]!r} has shape {list(found)}, "
                                  f"expected {list(shape)} from the config")
    return {name: stored[name] for name in expected}, reader


def _normalise(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def _aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """np.empty with its data 64-byte aligned, so that XLA:CPU's device_put adopts it instead of copying it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _place(shape, dtype, sharding, layers: list[int] | None, read) -> jax.Array:
    """Builds one global array: `read(layer)` returns that layer's tensor (Flax layout); only local shards are kept."""
    index_map = {d: _normalise(i, shape) for d, i in sharding.addressable_devices_indices_map(shape).items()}
    buffers: dict[Any, np.ndarray] = {}
    for index in set(tuple((s.start, s.stop) for s in idx) for idx in index_map.values()):
        buffers[index] = _aligned_empty([stop - start for start, stop in index], dtype)
    if layers is None:
        tensor = read(None)
        for index, buf in buffers.items():
            buf[...] = tensor[tuple(slice(a, b) for a, b in index)]  # casts to the param dtype in place
        del tensor
    else:
        for i in layers:
            tensor = read(i)
            for index, buf in buffers.items():
                (start, stop), rest = index[0], index[1:]
                if start <= i < stop:
                    buf[i - start] = tensor[tuple(slice(a, b) for a, b in rest)]
    arrays = [jax.device_put(buffers[tuple((s.start, s.stop) for s in idx)], d) for d, idx in index_map.items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def load_params(model_dir: str, config: ModelConfig, shardings: Any = None) -> dict:
    """Reads an HF Qwen2 directory into the params tree of `Qwen2Encoder(config)`.

    `shardings`: a pytree of `jax.sharding.Sharding` matching the params (from sharding.py), or None for this
    process's first local device (not `jax.devices()[0]`, which belongs to process 0 when several processes run).
    Tensors are cast to `config.param_dtype`.
    """
    names, reader = check_checkpoint(model_dir, config)
    dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params: dict = {}
    for entry in mapping.tensor_maps(config):
        def read(i, entry=entry):
            return entry.to_flax(reader.read(names[entry.hf_name.format(i=i)]))

        if entry.per_layer and not config.scan_layers:
            targets = [(mapping.flax_path(entry, config, i), None, [i]) for i in range(config.num_layers)]
        elif entry.per_layer:
            targets = [(mapping.flax_path(entry, config), config.num_layers, list(range(config.num_layers)))]
        else:
            targets = [(entry.path, None, None)]
        for path, stacked, layers in targets:
            leaf_shape = tuple(entry.to_flax(np.empty(entry.hf_shape, np.int8)).shape)
            shape = (stacked,) + leaf_shape if stacked else leaf_shape
            sharding = _lookup(shardings, path) if shardings is not None else default
            if stacked:
                array = _place(shape, dtype, sharding, layers, read)
            elif layers is not None:  # an unscanned layer: one tensor
                array = _place(shape, dtype, sharding, None, lambda _, i=layers[0]: read(i))
            else:
                array = _place(shape, dtype, sharding, None, read)
            _insert(params, path, array)
    log.info("loaded %d tensors from %s", len(names), model_dir)
    return params


def _lookup(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _insert(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
