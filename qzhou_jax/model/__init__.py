"""The embedding model: Flax Qwen2.5 with bidirectional attention, pooling and normalisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from qzhou_jax.model import lora, masks
from qzhou_jax.model.config import PRESETS, ModelConfig, preset
from qzhou_jax.model.pooling import (embed, embed_segments, l2_normalize, mean_pool, last_token_pool,
                                     segment_mean_pool)
from qzhou_jax.model.qwen2 import Qwen2Encoder


def init_params(config: ModelConfig, rng: jax.Array, length: int = 8):
    """Random parameters (boxed with logical axis names stripped), as a plain pytree."""
    model = Qwen2Encoder(config)
    ids = jnp.zeros((1, length), jnp.int32)
    return nn.unbox(model.init(rng, ids, jnp.ones_like(ids))["params"])


def abstract_params(config: ModelConfig):
    """Shapes/dtypes of the params and their logical axis names, without allocating anything."""
    model = Qwen2Encoder(config)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(ids.shape, jnp.int32),
                                              jnp.ones(ids.shape, jnp.int32)))["params"]
    return nn.unbox(boxed), nn.get_partition_spec(boxed)


def hidden_states(params, config: ModelConfig, input_ids, attention_mask=None, segment_ids=None, rng=None):
    """Final hidden states [B, L, D]. `rng`: LoRA dropout (training only; None: none).

    Partial fine-tuning (`config.frozen_layers = k`, or `freeze_embedding`): the embedding and the bottom k layers
    run under stop_gradient, so the backward pass ends at layer k: no residuals are kept for them and no
    gradient is computed there. The values are the same either way."""
    rngs = {"dropout": rng} if rng is not None else None
    if not config.embedding_frozen:
        return Qwen2Encoder(config).apply({"params": params}, input_ids, attention_mask, segment_ids, rngs=rngs)
    k = config.frozen_layers
    if segment_ids is None:
        mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask
        segment_ids = masks.segment_ids_from_mask(mask)
    bottom, top = split_frozen(params, config)
    x = Qwen2Encoder(config, stop=k, final_norm=False).apply(
        {"params": jax.lax.stop_gradient(bottom)}, input_ids, segment_ids=segment_ids)
    return Qwen2Encoder(config, start=k, embed_inputs=False).apply(
        {"params": top}, jax.lax.stop_gradient(x), segment_ids=segment_ids, rngs=rngs)


def split_frozen(params, config: ModelConfig):
    """(embedding + layers [0, k), layers [k, L) + final norm) for k = config.frozen_layers: the params of the
    two halves `hidden_states` runs (stacked layer leaves are sliced along their leading layer axis)."""
    k = config.frozen_layers
    if config.scan_layers:
        bottom = {"embedding": params["embedding"]}
        if k:
            bottom["layers"] = jax.tree.map(lambda a: a[:k], params["layers"])
        top = {"layers": jax.tree.map(lambda a: a[k:], params["layers"]) if k else params["layers"],
               "norm": params["norm"]}
    else:
        bottom = {"embedding": params["embedding"], **{f"layers_{i}": params[f"layers_{i}"] for i in range(k)}}
        top = {"norm": params["norm"],
               **{f"layers_{i}": params[f"layers_{i}"] for i in range(k, config.num_layers)}}
    return bottom, top


# ---------------------------------------------------------------------------------- trainable / frozen params
# The trainer differentiates and optimises only the trainable part, so frozen weights get neither gradients nor
# optimizer state: LoRA -> the adapters; partial fine-tuning -> layers [k, L) + final norm; otherwise everything.
# These work on boxed (nn.Partitioned) trees too, so the optimizer state's shardings follow (train_step.py).
def partition(params, config: ModelConfig):
    """(trainable, frozen) sub-trees of `params` (nested dicts; frozen may be empty)."""
    if config.lora_rank:
        return lora.split_adapters(params)
    if config.embedding_frozen:
        bottom, top = split_frozen(params, config)
        return top, bottom
    return params, {}


def combine(trainable, frozen, config: ModelConfig):
    """`partition`'s inverse: the full params tree (stacked layers concatenated back; differentiable)."""
    if config.embedding_frozen and config.scan_layers and config.frozen_layers:
        layers = jax.tree.map(lambda b, t: jnp.concatenate([b, t], axis=0), frozen["layers"], trainable["layers"])
        return {"embedding": frozen["embedding"], "layers": layers, "norm": trainable["norm"]}
    return lora.join(frozen, trainable) if frozen else trainable


def write_back(params, trainable, config: ModelConfig):
    """`params` with its trainable part replaced by `trainable` (stacked layers written in place with
    dynamic_update_slice, which XLA does inside a donated buffer)."""
    if config.embedding_frozen and config.scan_layers and config.frozen_layers:
        k = config.frozen_layers
        layers = jax.tree.map(lambda full, top: jax.lax.dynamic_update_slice_in_dim(full, top.astype(full.dtype), k, 0),
                              params["layers"], trainable["layers"])
        return {**params, "layers": layers, "norm": trainable["norm"]}
    return lora.join(params, trainable)


def num_trainable(params, config: ModelConfig) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(partition(params, config)[0]))


def init_adapters(config: ModelConfig, rng: jax.Array):
    """Fresh LoRA adapters (A: peft's kaiming-uniform, B: zeros) for `config`, as a params sub-tree. Jitted, the
    rest of the random init is dead code and never computed."""
    return lora.split_adapters(init_params(config, rng))[0]


def merge_lora(params, config: ModelConfig):
    """(params with the adapters folded into their kernels, config without LoRA); no-op without LoRA."""
    if not config.lora_rank:
        return params, config
    return lora.merge(params, config), config.without_lora()


def embed_tokens(params, config: ModelConfig, input_ids, attention_mask, dim: int | None = None, rng=None):
    """Token ids -> L2-normalised float32 embeddings [B, D] (the model's pooling mode)."""
    hidden = hidden_states(params, config, input_ids, attention_mask, rng=rng)
    return embed(hidden, attention_mask, config.pooling, dim)


__all__ = ["ModelConfig", "PRESETS", "preset", "Qwen2Encoder", "init_params", "abstract_params",
           "hidden_states", "split_frozen", "partition", "combine", "write_back", "num_trainable", "init_adapters",
           "merge_lora", "embed_tokens", "embed", "embed_segments", "l2_normalize", "mean_pool", "last_token_pool",
           "segment_mean_pool"]
