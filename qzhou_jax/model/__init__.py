"""The embedding model: Flax Qwen2.5 with bidirectional attention, pooling and normalisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

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
    return Qwen2Encoder(config).apply({"params": params}, input_ids, attention_mask, segment_ids)


def embed_tokens(params, config: ModelConfig, input_ids, attention_mask, dim: int | None = None):
    """Token ids -> L2-normalised float32 embeddings [B, D] (the model's pooling mode)."""
    hidden = hidden_states(params, config, input_ids, attention_mask)
    return embed(hidden, attention_mask, config.pooling, dim)


__all__ = ["ModelConfig", "PRESETS", "preset", "Qwen2Encoder", "init_params", "abstract_params",
           "hidden_states", "embed_tokens", "embed", "embed_segments", "l2_normalize", "mean_pool", "last_token_pool",
           "segment_mean_pool"]
