"""One training step: embed the global batch, take the task's loss, update with Optax. Pure functions for jit.

The loss sees the embeddings of the whole global batch (the arrays are sharded over the mesh's batch axes and
XLA inserts the gathers), so in-batch negatives cross devices. Every function here takes the typed `Batch`
(qzhou_jax/batch.py, made once at the device boundary); its static `task` picks the loss, and since it is part
of the pytree structure, jit compiles one program per task type (their shapes and losses differ).

GradCache (Gao et al. 2021; Tevatron/cachex in JAX) keeps activation memory independent of the batch size: (1)
embed the batch chunk by chunk without keeping activations, (2) take the loss and its gradient with respect to the
embeddings over the whole batch, (3) re-run each chunk forward and back with that gradient as the cotangent,
accumulating parameter gradients. Same gradients as the plain step, more compute (one extra forward).

Only the trainable part of the params is differentiated and optimised (`model.partition`: LoRA adapters, the top
layers of partial fine-tuning, or everything): frozen weights get no gradient and no optimizer state, and the
step writes the updated part back into the full params tree (`model.write_back`), which the checkpoint holds.
LoRA dropout draws its masks from `fold_in(key(dropout_seed), step)`, so a resumed run draws the same ones.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from qzhou_jax import batch as batch_lib, constraints, losses, model as qmodel, sharding
from qzhou_jax.train import optim
from qzhou_jax.batch import Batch
from qzhou_jax.model import ModelConfig

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def create_state(params, tx: optax.GradientTransformation, config: ModelConfig | None = None) -> TrainState:
    """Step 0; the optimizer state covers the trainable part of `params` only (config None: all of it)."""
    trainable = params if config is None else qmodel.partition(params, config)[0]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable))


def abstract_state(config: ModelConfig, tx: optax.GradientTransformation, rules) -> tuple[TrainState, TrainState]:
    """(abstract train state with shardings, its shardings), without allocating anything: the one builder that
    train.py, plan.py and the benchmarks share. The state is eval_shaped from boxed params, so the optimizer's
    moments carry their params' logical names and `rules` maps every leaf (counters replicated)."""
    abstract, logical = qmodel.abstract_params(config)
    boxed = jax.eval_shape(lambda p: create_state(p, tx, config), sharding.box(abstract, logical))
    state_shardings = rules.boxed_shardings(boxed)
    unboxed = flax.linen.unbox(boxed)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, state_shardings)
    return state, state_shardings


# ------------------------------------------------------------------------------------------------ embeddings
def _embed(params, config: ModelConfig, ids, mask, dim=None, rng=None):
    return qmodel.embed_tokens(params, config, ids, mask, dim, rng=rng)


def _fold(rng, i):
    return None if rng is None else jax.random.fold_in(rng, i)


def embed_packed_batch(params, config: ModelConfig, batch: Batch, rng=None) -> tuple[jax.Array, jax.Array]:
    """Packed batch (data/packing.py fields): one forward over the packed rows, pooled per segment, gathered back
    to anchors [B, E] and candidates [B, C, E] -- the same embeddings as the padded path."""
    seg = batch.packed_segment_ids
    hidden = qmodel.hidden_states(params, config, batch.packed_ids, segment_ids=seg, rng=rng)
    num_segments = batch.packed_segment_lengths.shape[-1]
    pick = lambda index: qmodel.embed_segments(hidden, seg, num_segments, index, config.pooling)  # noqa: E731
    return pick(batch.packed_anchor_index), pick(batch.packed_cand_index)


def _embed_side(params, config: ModelConfig, side: str, inputs: dict[str, jax.Array], rng=None) -> jax.Array:
    """One side's embeddings: anchors [B, E] or candidates [B, C, E] (flattened to B*C texts for the model)."""
    ids, mask = inputs[f"{side}_ids"], inputs[f"{side}_mask"]
    rng = _fold(rng, SIDES.index(side))
    if side == "cand":
        b, c, length = ids.shape
        return _embed(params, config, ids.reshape(b * c, length), mask.reshape(b * c, length),
                      rng=rng).reshape(b, c, -1)
    return _embed(params, config, ids, mask, rng=rng)


SIDES = ("anchor", "cand")


def embed_batch(params, config: ModelConfig, batch: Batch, rng=None) -> tuple[jax.Array, jax.Array]:
    """Anchors [B, E] and candidates [B, C, E], L2-normalised float32. `rng`: LoRA dropout (None: none)."""
    if batch.packed:
        return embed_packed_batch(params, config, batch, rng)
    return (_embed_side(params, config, "anchor", batch.side_inputs("anchor"), rng),
            _embed_side(params, config, "cand", batch.side_inputs("cand"), rng))


def _full(config: ModelConfig, frozen):
    """trainable -> the full params tree (frozen None: the trainable part is everything)."""
    return (lambda t: t) if frozen is None else (lambda t: qmodel.combine(t, frozen, config))


def plain_loss_and_grads(params, config, loss_config, batch: Batch, *, frozen=None, rng=None):
    """(loss, metrics, gradients with respect to `params`). With `frozen`, `params` is the trainable part
    (model.partition) and the model sees `model.combine(params, frozen)`: only `params` is differentiated."""
    full = _full(config, frozen)

    def loss_fn(p):
        a, c = embed_batch(full(p), config, batch, rng)
        return losses.task_loss(a, c, batch, loss_config)
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


def gradcache_balance(batch_size: int, num_chunks: int, batch_devices: int) -> str | None:
    """Why `num_chunks` GradCache chunks of a `batch_size` batch do not split evenly over the batch devices
    (each chunk's B/K rows are spread over them: a remainder idles devices), or None when they do."""
    if num_chunks <= 1:
        return None
    if batch_size % num_chunks:
        return f"batch {batch_size} is not divisible by {num_chunks} GradCache chunks"
    per_chunk = batch_size // num_chunks
    if per_chunk % batch_devices:
        return (f"GradCache chunks of {per_chunk} rows ({batch_size} / {num_chunks}) do not divide over "
                f"{batch_devices} batch devices: pick chunks so that batch / chunks is a multiple of "
                f"{batch_devices} (e.g. {_even_chunks(batch_size, batch_devices)})")
    return None


def _even_chunks(batch_size: int, batch_devices: int) -> str:
    ok = [k for k in range(2, batch_size + 1) if batch_size % k == 0 and (batch_size // k) % batch_devices == 0]
    return ", ".join(map(str, ok[:4])) or "none: use fewer batch devices"


def gradcache_loss_and_grads(params, config, loss_config, batch: Batch, num_chunks: int, *, frozen=None, rng=None):
    """GradCache's (loss, metrics, gradients); `frozen` / `rng` as in `plain_loss_and_grads` (each chunk draws
    its dropout from fold_in(rng, chunk), the same in the embedding pass and in the backward pass)."""
    if batch.packed:
        return _packed_gradcache_loss_and_grads(params, config, loss_config, batch, num_chunks, frozen=frozen,
                                                rng=rng)
    b = batch.size
    if b % num_chunks:
        raise ValueError(f"batch size {b} is not divisible by gradcache chunks {num_chunks}")
    full = _full(config, frozen)
    chunk_ids = jnp.arange(num_chunks)
    # Every model input of each side (batch_schema FIELDS rows with a `side`), chunked along its batch axis, with
    # the chunk's index (its dropout key).
    chunked = {side: (jax.tree.map(lambda x: _to_chunks(x, num_chunks), batch.side_inputs(side)), chunk_ids)
               for side in SIDES}

    def embed_chunk(p, side, xs):
        inputs, i = xs
        return _embed_side(full(p), config, side, inputs, _fold(rng, i))

    # (1) embeddings without activations kept: lax.map runs one chunk at a time and nothing is differentiated.
    fixed = jax.lax.stop_gradient(params)
    reps = {k: _from_chunks(jax.lax.map(lambda xs, k=k: embed_chunk(fixed, k, xs), v)) for k, v in chunked.items()}

    # (2) loss over the whole global batch, gradient with respect to the embeddings.
    def loss_fn(a, cands):
        return losses.task_loss(a, cands, batch, loss_config)
    (loss, metrics), (g_a, g_c) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(reps["anchor"],
                                                                                          reps["cand"])

    # (3) per chunk: forward again, backward with the cached embedding gradient, accumulate.
    grads = jax.tree.map(
        jnp.add,
        _chunked_backward(lambda p, xs: embed_chunk(p, "anchor", xs), params, chunked["anchor"],
                          _to_chunks(g_a, num_chunks)),
        _chunked_backward(lambda p, xs: embed_chunk(p, "cand", xs), params, chunked["cand"],
                          _to_chunks(g_c, num_chunks)))
    return loss, metrics, grads


def _chunked_backward(embed_fn, params, chunk_inputs, cotangents):
    """GradCache step (3): for each chunk (scan over the leading axis of `chunk_inputs` / `cotangents`), forward
    `embed_fn(params, inputs)` again and pull its cached embedding gradient back to the params; summed."""
    def body(acc, xs):
        inputs, cot = xs
        _, vjp = jax.vjp(lambda p: embed_fn(p, inputs), params)
        return jax.tree.map(jnp.add, acc, vjp(cot)[0]), None
    grads, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (chunk_inputs, cotangents))
    return grads


def _segment_table(params, config: ModelConfig, ids, segment_ids, num_segments: int, rng=None) -> jax.Array:
    """Packed rows [r, T] -> the embedding of every segment slot [r * S, E] (unused slots: 0)."""
    hidden = qmodel.hidden_states(params, config, ids, segment_ids=segment_ids, rng=rng)
    slots = jnp.arange(ids.shape[0] * num_segments)
    return qmodel.embed_segments(hidden, segment_ids, num_segments, slots, config.pooling)


def _packed_gradcache_loss_and_grads(params, config, loss_config, batch: Batch, num_chunks: int, *,
                                     frozen=None, rng=None):
    """GradCache over packed rows. A packed row mixes texts of different examples, so chunks are groups of rows,
    not of examples: (1) every chunk's segment embeddings without activations, (2) the loss and its gradient
    with respect to those embedding tables (anchors and candidates are picked from them by the batch's flat
    segment indices), (3) per chunk, forward again and backward with its slice of that gradient. Rows are
    chunked like `_to_chunks` (every K-th row), so the pipeline makes the row count a multiple of K times the
    batch devices (data/packing.py `row_multiple`)."""
    rows, num_segments = batch.packed_segment_lengths.shape
    if rows % num_chunks:
        raise ValueError(f"{rows} packed rows are not divisible by gradcache chunks {num_chunks} "
                         f"(the pipeline rounds rows to a multiple of the chunks: pass row_chunks to build_pipeline)")
    per_chunk = rows // num_chunks
    ids, seg = _to_chunks(batch.packed_ids, num_chunks), _to_chunks(batch.packed_segment_ids, num_chunks)

    full = _full(config, frozen)

    def table(p, xs):
        return _segment_table(full(p), config, xs[0], xs[1], num_segments, _fold(rng, xs[2]))

    chunks = (ids, seg, jnp.arange(num_chunks))
    fixed = jax.lax.stop_gradient(params)
    tables = jax.lax.map(lambda xs: table(fixed, xs), chunks)

    def stacked_slot(index):  # flat row * S + s of the batch -> its slot in the stacked [K, r/K * S] tables
        row, s = index // num_segments, index % num_segments
        return (row % num_chunks) * (per_chunk * num_segments) + (row // num_chunks) * num_segments + s

    def loss_fn(tables):
        flat = constraints.replicated(tables.reshape(-1, tables.shape[-1]))

        def pick(index):
            picked = jnp.take(flat, jnp.maximum(stacked_slot(index), 0), axis=0)
            return jnp.where((index >= 0)[..., None], picked, 0.0)  # empty text: 0, as the padded path
        return losses.task_loss(pick(batch.packed_anchor_index), pick(batch.packed_cand_index), batch, loss_config)
    (loss, metrics), g_tables = jax.value_and_grad(loss_fn, has_aux=True)(tables)

    grads = _chunked_backward(table, params, chunks, g_tables)
    return loss, metrics, grads


# ------------------------------------------------------------------------------------------------ the step
def dropout_rng(config: ModelConfig, seed: int, step) -> jax.Array | None:
    """The step's LoRA-dropout key (None when there is no dropout): a function of (seed, step) only."""
    if not (config.lora_rank and config.lora_dropout > 0):
        return None
    return jax.random.fold_in(jax.random.key(seed), step)


def train_step(state: TrainState, batch: Batch, *, config: ModelConfig, loss_config: losses.LossConfig,
               tx: optax.GradientTransformation, schedule, gradcache_chunks: int = 0,
               dropout_seed: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch, with the loss of `batch.task`, over the trainable part of the
    params (model.partition); the rest stays as it is."""
    trainable, frozen = qmodel.partition(state.params, config)
    kwargs = dict(frozen=frozen, rng=dropout_rng(config, dropout_seed, state.step))
    if gradcache_chunks and gradcache_chunks > 1:
        loss, metrics, grads = gradcache_loss_and_grads(trainable, config, loss_config, batch, gradcache_chunks,
                                                        **kwargs)
    else:
        loss, metrics, grads = plain_loss_and_grads(trainable, config, loss_config, batch, **kwargs)
    trainable, opt_state = optim.apply_gradients(tx, grads, state.opt_state, trainable)
    params = qmodel.write_back(state.params, trainable, config)
    consecutive, total = optim.nonfinite_counts(opt_state)
    anchor_tokens, cand_tokens = batch.count_tokens()
    metrics = dict(metrics)
    metrics.update(
        loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=optim.applied_learning_rate(schedule, state.opt_state),
        nonfinite_consecutive=consecutive, nonfinite_total=total,
        tokens=anchor_tokens + cand_tokens, anchor_tokens=anchor_tokens, cand_tokens=cand_tokens,
        examples=jnp.asarray(batch.size))
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


def make_step_fn(*, config: ModelConfig, loss_config, tx, schedule, gradcache_chunks: int,
                 rules: sharding.ShardingRules, state_shardings, dropout_seed: int = 0):
    """The jit-compiled step for every task type, with named in/out shardings (all from `rules`) and the state
    donated. `run(state, batch)` takes a `Batch`; its task picks the loss.

    The batch's in-shardings come from its fields' logical axes (batch_schema.py FIELDS through `rules`); one
    jitted function per task and set of present fields (both change the pytree). `run.jitted_for(batch)` gives the
    jitted function for a (possibly abstract) batch, e.g. to `.lower(state, batch).compile()` ahead of time.
    """
    step = functools.partial(train_step, config=config, loss_config=loss_config, tx=tx, schedule=schedule,
                             gradcache_chunks=gradcache_chunks, dropout_seed=dropout_seed)

    def with_rules(state, batch):
        with flax.linen.logical_axis_rules(rules.logical_axis_rules()):
            return step(state, batch)

    cache: dict[tuple[str, ...], Any] = {}

    def jitted_for(batch: Batch):
        key = (batch.task, tuple(batch.present()))
        if key not in cache:
            cache[key] = jax.jit(with_rules, in_shardings=(state_shardings, batch_lib.shardings(rules, batch)),
                                 out_shardings=(state_shardings, rules.replicated()), donate_argnums=0)
        return cache[key]

    def run(state, batch: Batch):
        with mesh_context(rules.mesh):
            return jitted_for(batch)(state, batch)
    run.jitted_for = jitted_for
    return run
