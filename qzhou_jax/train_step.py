"""One training step: embed the global batch, take the task's loss, update with Optax. Pure functions for jit.

The loss sees the embeddings of the whole global batch (the arrays are sharded over the mesh's batch axes and
XLA inserts the gathers), so in-batch negatives cross devices. One compiled step per task type, since their
batch shapes and losses differ.

GradCache (Gao et al. 2021; Tevatron/cachex in JAX) keeps activation memory independent of the batch size: (1)
embed the batch chunk by chunk without keeping activations, (2) take the loss and its gradient with respect to the
embeddings over the whole batch, (3) re-run each chunk forward and back with that gradient as the cotangent,
accumulating parameter gradients. Same gradients as the plain step, more compute (one extra forward).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from qzhou_jax import losses, model as qmodel, optim
from qzhou_jax.model import ModelConfig

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


# ------------------------------------------------------------------------------------------------ embeddings
def _embed(params, config: ModelConfig, ids, mask, dim=None):
    return qmodel.embed_tokens(params, config, ids, mask, dim)


def embed_packed_batch(params, config: ModelConfig, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Packed batch (data/packing.py keys): one forward over the packed rows, pooled per segment, gathered back to
    anchors [B, E] and candidates [B, C, E] -- the same embeddings as the padded path."""
    seg = batch["packed_segment_ids"]
    hidden = qmodel.hidden_states(params, config, batch["packed_ids"], segment_ids=seg)
    num_segments = batch["packed_segment_lengths"].shape[-1]
    pick = lambda index: qmodel.embed_segments(hidden, seg, num_segments, index, config.pooling)  # noqa: E731
    return pick(batch["packed_anchor_index"]), pick(batch["packed_cand_index"])


def embed_batch(params, config: ModelConfig, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Anchors [B, E] and candidates [B, C, E], L2-normalised float32."""
    if "packed_ids" in batch:
        return embed_packed_batch(params, config, batch)
    a = _embed(params, config, batch["anchor_ids"], batch["anchor_mask"])
    b, c, length = batch["cand_ids"].shape
    cands = _embed(params, config, batch["cand_ids"].reshape(b * c, length), batch["cand_mask"].reshape(b * c, length))
    return a, cands.reshape(b, c, -1)


def _loss_from_embeddings(a, c, batch: Batch, task: str, loss_config: losses.LossConfig):
    return losses.task_loss(task, a, c, batch["cand_valid"], score=batch.get("score"), labels=batch.get("labels"),
                            config=loss_config, anchor_hash=batch.get("anchor_hash"), cand_hash=batch.get("cand_hash"))


def plain_loss_and_grads(params, config, loss_config, task, batch):
    def loss_fn(p):
        a, c = embed_batch(p, config, batch)
        return _loss_from_embeddings(a, c, batch, task, loss_config)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, metrics, grads


# ------------------------------------------------------------------------------------------------ GradCache
def _to_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
    """[B, ...] -> [num_chunks, B / num_chunks, ...] taking every num_chunks-th row, so each chunk keeps the
    batch axis's device layout (a sharded batch stays sharded inside every chunk)."""
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // num_chunks, num_chunks) + x.shape[1:]), 0, 1)


def _from_chunks(x: jax.Array) -> jax.Array:
    n, per = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((n * per,) + x.shape[2:])


def gradcache_loss_and_grads(params, config, loss_config, task, batch, num_chunks: int):
    if "packed_ids" in batch:
        raise ValueError("data.packing does not support GradCache yet (train.gradcache_chunks > 1): packed rows mix "
                         "texts of different examples, so they can't be chunked by example; turn one of them off")
    b, c, lc = batch["cand_ids"].shape
    if b % num_chunks:
        raise ValueError(f"batch size {b} is not divisible by gradcache chunks {num_chunks}")
    chunked = {
        "anchor": (_to_chunks(batch["anchor_ids"], num_chunks), _to_chunks(batch["anchor_mask"], num_chunks)),
        "cand": (_to_chunks(batch["cand_ids"].reshape(b, c * lc), num_chunks),
                 _to_chunks(batch["cand_mask"].reshape(b, c * lc), num_chunks)),
    }

    def embed_chunk(p, kind, ids, mask):
        if kind == "cand":
            n = ids.shape[0]
            return _embed(p, config, ids.reshape(n * c, lc), mask.reshape(n * c, lc)).reshape(n, c, -1)
        return _embed(p, config, ids, mask)

    # (1) embeddings without activations kept: lax.map runs one chunk at a time and nothing is differentiated.
    frozen = jax.lax.stop_gradient(params)
    reps = {k: _from_chunks(jax.lax.map(lambda xs, k=k: embed_chunk(frozen, k, *xs), v)) for k, v in chunked.items()}

    # (2) loss over the whole global batch, gradient with respect to the embeddings.
    def loss_fn(a, cands):
        return _loss_from_embeddings(a, cands, batch, task, loss_config)
    (loss, metrics), (g_a, g_c) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(reps["anchor"],
                                                                                          reps["cand"])

    # (3) per chunk: forward again, backward with the cached embedding gradient, accumulate.
    def backward(kind, cotangents):
        def body(acc, xs):
            ids, mask, cot = xs
            _, vjp = jax.vjp(lambda p: embed_chunk(p, kind, ids, mask), params)
            return jax.tree.map(jnp.add, acc, vjp(cot)[0]), None
        zeros = jax.tree.map(jnp.zeros_like, params)
        acc, _ = jax.lax.scan(body, zeros, (*chunked[kind], _to_chunks(cotangents, num_chunks)))
        return acc

    grads = jax.tree.map(jnp.add, backward("anchor", g_a), backward("cand", g_c))
    return loss, metrics, grads


# ------------------------------------------------------------------------------------------------ the step
def count_tokens(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Real (non-pad) tokens of the anchors and of the valid candidates."""
    if "packed_ids" in batch:
        lengths = batch["packed_segment_lengths"].reshape(-1)
        tokens = lambda index: jnp.where(index >= 0, jnp.take(lengths, jnp.maximum(index, 0)), 0)  # noqa: E731
        return tokens(batch["packed_anchor_index"]).sum(), (tokens(batch["packed_cand_index"])
                                                           * batch["cand_valid"]).sum()
    cand = batch["cand_mask"].sum(-1) * batch["cand_valid"]
    return batch["anchor_mask"].sum(), cand.sum()


def train_step(state: TrainState, batch: Batch, *, task: str, config: ModelConfig,
               loss_config: losses.LossConfig, tx: optax.GradientTransformation, schedule,
               gradcache_chunks: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
    if gradcache_chunks and gradcache_chunks > 1:
        loss, metrics, grads = gradcache_loss_and_grads(state.params, config, loss_config, task, batch,
                                                        gradcache_chunks)
    else:
        loss, metrics, grads = plain_loss_and_grads(state.params, config, loss_config, task, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    consecutive, total = optim.nonfinite_counts(opt_state)
    anchor_tokens, cand_tokens = count_tokens(batch)
    metrics = dict(metrics)
    metrics.update(
        loss=loss, grad_norm=optax.global_norm(grads), learning_rate=optim.applied_learning_rate(schedule, state.opt_state),
        nonfinite_consecutive=consecutive, nonfinite_total=total,
        tokens=anchor_tokens + cand_tokens, anchor_tokens=anchor_tokens, cand_tokens=cand_tokens,
        examples=jnp.asarray(batch["cand_valid"].shape[0]))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 * matmul params + full (not causal-halved)
    attention scores and values, 3 * 4 * layers * seq_len * heads * head_dim."""
    d, f, h, kv, hd = (config.hidden_size, config.intermediate_size, config.num_heads, config.num_kv_heads,
                       config.head_size)
    matmul_params = config.num_layers * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f)
    attention = config.num_layers * 4 * seq_len * h * hd
    return 6.0 * matmul_params + 3.0 * attention


def batch_flops(config: ModelConfig, batch_shapes: dict[str, tuple[int, ...]], tokens_anchor: float,
                tokens_cand: float) -> float:
    """Model FLOPs of one step: real tokens times per-token FLOPs at each side's padded length."""
    la = batch_shapes["anchor_ids"][-1]
    lc = batch_shapes["cand_ids"][-1]
    return tokens_anchor * flops_per_token(config, la) + tokens_cand * flops_per_token(config, lc)


def mesh_context(mesh):
    """The mesh that bare PartitionSpecs (flax logical constraints) resolve against."""
    return jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh


def make_step_fn(task: str, *, config: ModelConfig, loss_config, tx, schedule, gradcache_chunks: int,
                 state_shardings, batch_shardings, metrics_sharding, rules, mesh):
    """jit-compiled step for one task type, with named in/out shardings and the state donated."""
    step = functools.partial(train_step, task=task, config=config, loss_config=loss_config, tx=tx,
                             schedule=schedule, gradcache_chunks=gradcache_chunks)

    def with_rules(state, batch):
        with flax.linen.logical_axis_rules(rules):
            return step(state, batch)

    jitted = jax.jit(with_rules, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, metrics_sharding), donate_argnums=0)

    def run(state, batch):
        with mesh_context(mesh):
            return jitted(state, batch)
    run.jitted = jitted
    return run
