"""Scaled dot-product attention fed by segment ids, dispatched to a kernel by `ModelConfig.attention_impl`.

The mask is never a finished [B, 1, L, L] array handed in from outside: callers pass segment ids [B, L] (0 =
padding, equal positive ids = one text; an unpacked batch is `segment_ids = attention_mask`) and whether the mask
is causal. Each kernel expresses that the way it can:

- `xla`: einsum + softmax with the mask built here (CPU, tests; the reference for the others).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs. Its public signature takes a
  boolean mask, `is_causal` and per-row query/key lengths but no segment ids, and lengths cannot express packed
  rows or left padding, so the boolean mask is built here from the segment ids. Needs bf16/fp16 q/k/v.
- `splash`: the Pallas TPU splash-attention kernel, which takes `SegmentIds` natively and grouped-query K/V
  (fewer KV heads) as they are; run per example (vmap) under `shard_map` over the batch and head axes of the
  current mesh. Off TPU it runs in Pallas interpret mode (tests). Lengths are padded to a multiple of 128 (its
  block size) with a segment of their own and sliced back.
- `auto`: splash on TPU, cudnn on GPU when the compute dtype is bf16/fp16, else xla.

One mask semantics for all kernels: token q attends to token k iff their segment ids are equal (and k <= q when
causal). Real tokens therefore never see padding, and padding tokens (id 0) attend to padding only, so no row is
fully masked (splash requires that; it also keeps every kernel's padding outputs finite). Outputs at padding
positions are never pooled.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from qzhou_jax.model.config import ATTENTION_IMPLS

SPLASH_BLOCK = 128


def resolve_impl(impl: str, dtype=jnp.float32, platform: str | None = None) -> str:
    """`auto` -> a concrete kernel for this platform and compute dtype; others are checked and returned."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def segment_mask(segment_ids: jax.Array, causal: bool) -> jax.Array:
    """Boolean [B, 1, L, L]: query q may attend to key k (same segment; k <= q when causal)."""
    mask = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
        length = segment_ids.shape[-1]
        mask = mask & jnp.tril(jnp.ones((length, length), dtype=bool))[None]
    return mask[:, None]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
              impl: str = "xla") -> jax.Array:
    """q [B, L, H, hd], k/v [B, L, K, hd] (H a multiple of K: grouped-query), segment ids [B, L] -> [B, L, H, hd]."""
    impl = resolve_impl(impl, q.dtype)
    if impl == "xla":
        return _xla(q, k, v, segment_ids, causal)
    if impl == "cudnn":
        return _cudnn(q, k, v, segment_ids, causal)
    return _splash(q, k, v, segment_ids, causal)


# ------------------------------------------------------------------------------------------------ xla
def _xla(q, k, v, segment_ids, causal):
    # Hand-rolled rather than jax.nn.dot_product_attention(implementation="xla"): fp32 logits from bf16 inputs via
    # preferred_element_type, and GQA without repeating K/V: each KV head's query group is folded into the query
    # axis ([B, K, G*L, hd]), so both products are plain batched matmuls over (B, K) in heads-first layout. (The
    # earlier "bqkgd,bskd->bkgqs" einsum gives the same numbers but ran ~1.6x slower on XLA:CPU: its 5-D operands
    # are transposed per product; benchmarks/train_step.py --profile.)
    b, length, h, hd = q.shape
    kv = k.shape[2]
    group = h // kv
    mask = segment_mask(segment_ids, causal)  # [B, 1, L, L]
    q = jnp.transpose(q.reshape(b, length, kv, group, hd), (0, 2, 3, 1, 4)).reshape(b, kv, group * length, hd)
    k, v = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, K, L, hd]
    logits = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(hd)
    logits = logits.reshape(b, kv, group, length, length)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, kv, group * length, length)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(b, kv, group, length, hd)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, length, h, hd)


# ------------------------------------------------------------------------------------------------ cudnn
def _cudnn(q, k, v, segment_ids, causal):
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention_impl='cudnn' needs bf16/fp16 activations (model.dtype), got {q.dtype}; "
                         "use model.dtype='bfloat16' or attention_impl='xla'")
    return jax.nn.dot_product_attention(q, k, v, mask=segment_mask(segment_ids, causal), implementation="cudnn")


# ------------------------------------------------------------------------------------------------ splash
@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, length: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    one = sm.CausalMask((length, length)) if causal else sm.FullMask((length, length))
    block = next(b for b in (512, 256, SPLASH_BLOCK) if length % b == 0)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(sm.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q, k, v, segment_ids, causal):
    """Unsharded splash on [B, L, H, hd] / [B, L, K, hd] / [B, L]; vmapped over the batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    b, length, h, hd = q.shape
    padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
    if padded != length:  # the kernel's own padding is a segment (-1) of its own: it meets no other token
        widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - length)), constant_values=-1)
    kernel = _splash_kernel(h, padded, causal, jax.default_backend() != "tpu")
    q = q * jnp.asarray(1.0 / np.sqrt(hd), q.dtype)  # the kernel does not scale
    to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, L, N, hd] -> [B, N, L, hd]
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=SegmentIds(s1, s1)))(
        to_heads_first(q), to_heads_first(k), to_heads_first(v), segment_ids)
    return jnp.swapaxes(out, 1, 2)[:, :length].astype(v.dtype)


def _splash(q, k, v, segment_ids, causal):
    """Splash under shard_map over the mesh axes that the logical rules give `batch` and `heads` (Pallas kernels
    cannot be partitioned by XLA's SPMD pass). Without a mesh or rules it runs unsharded."""
    import flax.linen as nn
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not nn.get_logical_axis_rules():
        return _splash_local(q, k, v, segment_ids, causal)
    batch_axes, heads_axes, kv_axes = nn.logical_to_mesh_axes(("batch", "heads", "kv_heads"))
    if heads_axes is not None and kv_axes != heads_axes:
        # Query heads split but KV heads can't be split the same way (e.g. 2 KV heads on a tensor axis of 4):
        # give every query head its own K/V copy so each shard holds the KV heads its query heads use.
        group = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    qkv_spec = P(batch_axes, None, heads_axes, None)
    fn = functools.partial(_splash_local, causal=causal)
    return jax.shard_map(fn, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch_axes, None)), out_specs=qkv_spec,
                         check_vma=False)(q, k, v, segment_ids)
