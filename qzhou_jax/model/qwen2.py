"""Qwen2 / Qwen2.5 decoder stack in Flax (linen), used as a text encoder.

Numerically the same network as transformers' `Qwen2Model`: token embedding, RoPE, grouped-query attention with
biases on q/k/v only, RMSNorm, SwiGLU MLP, final norm. What QZhou changes is only the mask: bidirectional by default,
causal on request, always combined with padding and optional packing segments, passed to attention as segment ids
(attention.py dispatches to the xla / cudnn / splash kernel; no [B, 1, L, L] array is built at model entry).

Every weight carries logical axis names (vocab, embed, heads, kv_heads, head_dim, mlp, layers) and the main
activations are constrained by name (batch, length, embed, ...), so sharding.py maps them onto any mesh by rules.
Layers are stacked and scanned (one compiled layer body for 28 layers) under a configurable remat policy.

Parameter layout (HF names; `hf/` converts): q_proj kernel [embed, heads, head_dim], k/v [embed, kv_heads, head_dim],
o_proj [heads, head_dim, embed], gate/up [embed, mlp], down [mlp, embed]; scanned leaves get a leading `layers` axis.
With LoRA (config.lora_rank > 0) each targeted projection also holds `lora_a` [*in axes, lora_rank] and `lora_b`
[lora_rank, *out axes] (model/lora.py), named like the kernel's axes so they shard like it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from qzhou_jax.model import attention, lora, masks
from qzhou_jax.model.config import ModelConfig

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dtype(name: str):
    return jnp.dtype(name)


def _init(config: ModelConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def _constrain(x, names):
    return nn.with_logical_constraint(x, names)


def _contract(x, kernel, in_axes: int):
    """x [..., *in] . kernel [*in, *out] -> [..., *out] (the last `in_axes` axes of x against the first of kernel)."""
    return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x, kernel, in_axes: int):
    """`_contract` with a hand-written backward pass; the same math as autodiff's, laid out differently.

    JAX's transpose rule for dot_general computes every kernel gradient as dot(dy, x) in [*out, *in] order and
    then transposes it. On XLA:CPU that makes layout assignment store the incoming gradient (for the MLP: the
    SwiGLU backward, [tokens, mlp]) transposed, in strided loop fusions that took ~20% of the whole train step
    (benchmarks/train_step.py --profile; docs/planning.md). Here the order is picked per projection so that
    only the narrower operand is transposed. Remat policies still see the forward dot (jax saves
    custom_vjp outputs under `checkpoint_dots` like plain dots); tests/model/test_qwen2.py checks gradients.
    """
    return _contract(x, kernel, in_axes)


def _project_fwd(x, kernel, in_axes):
    return _contract(x, kernel, in_axes), (x, kernel)


def _project_bwd(in_axes, residuals, dy):
    x, kernel = residuals
    batch_axes = tuple(range(x.ndim - in_axes))
    out_axes = kernel.ndim - in_axes
    dx = jax.lax.dot_general(dy, kernel, ((tuple(range(dy.ndim - out_axes, dy.ndim)),
                                           tuple(range(in_axes, kernel.ndim))), ((), ())))
    # XLA:CPU materialises the transpose of the dot's left operand ([tokens, features] -> [features, tokens]);
    # make that the narrower of x and dy (down_proj: dy [tokens, embed], not x [tokens, mlp]) and transpose the
    # small [*out, *in] result instead.
    if math.prod(x.shape[x.ndim - in_axes:]) > math.prod(kernel.shape[in_axes:]):
        dkernel_t = jax.lax.dot_general(dy, x, ((batch_axes, batch_axes), ((), ())))  # [*out, *in]
        dkernel = jnp.transpose(dkernel_t, tuple(range(out_axes, kernel.ndim)) + tuple(range(out_axes)))
    else:
        dkernel = jax.lax.dot_general(x, dy, ((batch_axes, batch_axes), ((), ())))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


project.defvjp(_project_fwd, _project_bwd)


class Projection(nn.Module):
    """A linear map with its kernel stored in its natural multi-axis shape (e.g. [embed, heads, head_dim]).

    linen's DenseGeneral initialises a flattened kernel and reshapes it, which trips its own logical-axis
    constraints under a mesh; here the kernel is created in its final shape, so axis names always fit.
    """
    config: ModelConfig
    features: tuple[int, ...]
    names: tuple[str, ...]       # logical names of the kernel's axes: input axes, then output axes
    in_axes: int = 1             # how many trailing input axes are contracted
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel = self.param("kernel", _init(cfg, self.names), in_shape + self.features, _dtype(cfg.param_dtype))
        dtype = _dtype(cfg.dtype)
        y = project(x.astype(dtype), kernel.astype(dtype), self.in_axes)
        if cfg.lora_rank and self.name in cfg.lora_targets:
            y = y + self._lora(x.astype(dtype), in_shape, dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.in_axes:]),
                              self.features, _dtype(cfg.param_dtype))
            y = y + bias.astype(dtype)
        return y

    def _lora(self, x, in_shape, dtype):
        """(alpha / r) * B(A(dropout(x))), as peft's LoRA Linear computes it; dropout only when the caller passes a
        "dropout" rng (training). The adapters are stored in float32 whatever `param_dtype` is (peft's
        autocast_adapter_dtype): a bf16 frozen base halves its memory, while the few trained weights and their
        optimizer moments keep full precision."""
        cfg = self.config
        names_a = self.names[:self.in_axes] + ("lora_rank",)
        names_b = ("lora_rank",) + self.names[self.in_axes:]
        a = self.param("lora_a", nn.with_logical_partitioning(lora.init_a(math.prod(in_shape)), names_a),
                       in_shape + (cfg.lora_rank,), jnp.float32)
        b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, names_b),
                       (cfg.lora_rank,) + self.features, jnp.float32)
        if cfg.lora_dropout > 0 and self.has_rng("dropout"):
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - cfg.lora_dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - cfg.lora_dropout), 0).astype(dtype)
        low = project(x, a.astype(dtype), self.in_axes)
        return project(low, b.astype(dtype), 1) * jnp.asarray(cfg.lora_scale, dtype)


class RMSNorm(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), _dtype(cfg.param_dtype))
        # As transformers: normalise in fp32, cast back, then scale.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
        return scale.astype(_dtype(cfg.dtype)) * x32.astype(_dtype(cfg.dtype))


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """RoPE in the rotate-half convention of transformers. x: [B, L, N, hd], positions: [B, L]."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, segment_ids, positions):
        cfg = self.config
        hd, h, kv = cfg.head_size, cfg.num_heads, cfg.num_kv_heads
        q = Projection(cfg, (h, hd), ("embed", "heads", "head_dim"), use_bias=True, name="q_proj")(x)
        k = Projection(cfg, (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=True, name="k_proj")(x)
        v = Projection(cfg, (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=True, name="v_proj")(x)
        q = _constrain(rotary(q, positions, cfg.rope_theta), ("batch", "length", "heads", "head_dim"))
        k = _constrain(rotary(k, positions, cfg.rope_theta), ("batch", "length", "kv_heads", "head_dim"))
        v = _constrain(v, ("batch", "length", "kv_heads", "head_dim"))

        out = attention.attention(q, k, v, segment_ids, causal=cfg.attention == "causal", impl=cfg.attention_impl)
        out = _constrain(out, ("batch", "length", "heads", "head_dim"))
        return Projection(cfg, (cfg.hidden_size,), ("heads", "head_dim", "embed"), in_axes=2, name="o_proj")(out)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        gate = Projection(cfg, (cfg.intermediate_size,), ("embed", "mlp"), name="gate_proj")(x)
        up = Projection(cfg, (cfg.intermediate_size,), ("embed", "mlp"), name="up_proj")(x)
        hidden = _constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection(cfg, (cfg.hidden_size,), ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, segment_ids, positions):
        cfg = self.config
        x = x + Attention(cfg, name="self_attn")(RMSNorm(cfg, name="input_layernorm")(x), segment_ids, positions)
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attention_layernorm")(x))
        x = _constrain(x, ("batch", "length", "embed"))
        if self.config.scan_layers:
            return x, None
        return x


class Qwen2Encoder(nn.Module):
    """input ids [B, L] (+ attention mask or segment ids) -> final hidden states [B, L, D] (after the last norm).

    `start` / `stop` / `embed_inputs` / `final_norm` run a slice of the network on a matching slice of the params
    (model.hidden_states uses them for partial fine-tuning: the frozen bottom under stop_gradient, then the
    trained top): layers [start, stop) (stop None: all), from token ids (embed_inputs) or from hidden states.
    """
    config: ModelConfig
    start: int = 0
    stop: int | None = None
    embed_inputs: bool = True
    final_norm: bool = True

    @nn.compact
    def __call__(self, inputs, attention_mask=None, segment_ids=None):
        cfg = self.config
        if segment_ids is None:
            if attention_mask is None:
                attention_mask = jnp.ones(inputs.shape[:2], jnp.int32)
            segment_ids = masks.segment_ids_from_mask(attention_mask)
        positions = masks.positions_from_segments(segment_ids)

        if self.embed_inputs:
            embedding = self.param(
                "embedding", nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range),
                                                          ("vocab", "embed")),
                (cfg.vocab_size, cfg.hidden_size), _dtype(cfg.param_dtype))
            x = jnp.take(embedding, inputs, axis=0).astype(_dtype(cfg.dtype))
        else:
            x = inputs.astype(_dtype(cfg.dtype))
        x = _constrain(x, ("batch", "length", "embed"))

        stop = cfg.num_layers if self.stop is None else self.stop
        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy],
                                 prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers and stop > self.start:
            stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=stop - self.start,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(cfg, name="layers")(x, segment_ids, positions)
        elif not cfg.scan_layers:
            for i in range(self.start, stop):
                x = layer_cls(cfg, name=f"layers_{i}")(x, segment_ids, positions)
        return RMSNorm(cfg, name="norm")(x) if self.final_norm else x
