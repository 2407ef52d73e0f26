"""The embedding model: Flax Qwen2.5 with bidirectional attention, pooling and normalisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from qzhou_jax.model import masks
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


def hidden_states(params, config: ModelConfig, input_ids, attention_mask=None, segment_ids=None):
    """Final hidden states [B, L, D]. With `config.frozen_layers = k` (partial fine-tuning) the embedding and the
    bottom k layers run under stop_gradient, so the backward pass ends at layer k: no residuals are kept for
    them and their gradients (zeros) cost nothing. The values are the same either way."""
    k = config.frozen_layers
    if not k:
        return Qwen2Encoder(config).apply({"params": params}, input_ids, attention_mask, segment_ids)
    if segment_ids is None:
        mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask
        segment_ids = masks.segment_ids_from_mask(mask)
    bottom, top = split_frozen(params, config)
    x = Qwen2Encoder(config, stop=k, final_norm=False).apply(
        {"params": jax.lax.stop_gradient(bottom)}, input_ids, segment_ids=segment_ids)
    return Qwen2Encoder(config, start=k, embed_inputs=False).apply(
        {"params": top}, jax.lax.stop_gradient(x), segment_ids=segment_ids)


def split_frozen(params, config: ModelConfig):
    """(embedding + layers [0, k), layers [k, L) + final norm) for k = config.frozen_layers: the params of the
    two halves `hidden_states` runs (stacked layer leaves are sliced along their leading layer axis)."""
    k = config.frozen_layers
    if config.scan_layers:
        bottom = {"embedding": params["embedding"], "layers": jax.tree.map(lambda a: a[:k], params["layers"])}
        top = {"layers": jax.tree.map(lambda a: a[k:], params["layers"]), "norm": params["norm"]}
    else:
        bottom = {"embedding": params["embedding"], **{f"layers_{i}": params[f"layers_{i}"] for i in range(k)}}
        top = {"norm": params["norm"],
               **{f"layers_{i}": params[f"layers_{i}"] for i in range(k, config.num_layers)}}
    return bottom, top


def trainable_mask(params, config: ModelConfig):
    """A params-shaped tree of 0/1 multipliers (float32, broadcastable to each leaf): 0 where partial fine-tuning
    freezes the weights (the embedding and layers below `config.frozen_layers`), 1 elsewhere. Stacked layer leaves
    get a [L, 1, ...] column, unstacked leaves a scalar."""
    k = config.frozen_layers

    def mask(path, leaf):
        top = str(getattr(path[0], "key", path[0]))
        if top == "embedding":
            return jnp.float32(0.0 if k else 1.0)
        if top == "layers":  # stacked: [L, ...]
            column = (jnp.arange(leaf.shape[0]) >= k).astype(jnp.float32)
            return column.reshape((-1,) + (1,) * (leaf.ndim - 1))
        if top.startswith("layers_"):
            return jnp.float32(1.0 if int(top.split("_")[1]) >= k else 0.0)
        return jnp.float32(1.0)
    return jax.tree_util.tree_map_with_path(mask, params)


def embed_tokens(params, config: ModelConfig, input_ids, attention_mask, dim: int | None = None):
    """Token ids -> L2-normalised float32 embeddings [B, D] (the model's pooling mode)."""
    hidden = hidden_states(params, config, input_ids, attention_mask)
    return embed(hidden, attention_mask, config.pooling, dim)


__all__ = ["ModelConfig", "PRESETS", "preset", "Qwen2Encoder", "init_params", "abstract_params",
           "hidden_states", "split_frozen", "trainable_mask", "embed_tokens", "embed", "embed_segments", "l2_normalize", "mean_pool", "last_token_pool",
           "segment_mean_pool"]
