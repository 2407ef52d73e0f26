"""Contrastive losses of the QZhou-Embedding recipe (docs/recipe.md section 3), as pure JAX functions.

All three task types share one batch layout (the GLOBAL batch, embeddings already L2-normalised):
  a          [B, E]     anchors: the query / text_a / the text to classify
  c          [B, C, E]  candidates: c[:, 0] the positive (text_b for pair-score), c[:, 1:] negatives
  cand_valid [B, C]     False marks padding candidates; c[:, 0] is always valid
  score      [B]        pair-score gold scores (CoSENT)
  labels     [B, 1 + C] classification labels: the anchor's, then each candidate's

Duplicate masks (optional `anchor_hash` [B] / `cand_hash` [B, C] int32, hashes of the normalised texts computed by
the data pipeline): a negative term is dropped when its text is identical to row i's anchor or positive, or when
it is a (query, positive) partner of such a text: q_j / d_j+ whose pair partner d_j+ / q_j is identical to q_i or
d_i+ (a duplicated query's positive is a positive, not a negative). CoSENT drops the terms between two pairs of
identical texts (either order); classification drops anchors and negatives identical to the anchor or its
positive. Without hashes nothing changes. `masked_duplicates` counts the terms so dropped in the batch.

Because every similarity is taken over the whole global batch, calling these inside `jit` on batch-sharded
arrays makes in-batch negatives cross devices with no explicit collective.

Numerics: inputs are cast to float32 first and the similarity matmuls run at HIGHEST precision (at tau = 0.02
a similarity error of 1e-3 is already 0.05 in logit space, too much for TF32/bf16 passes). Entries that are
not in a denominator are replaced by a large negative *finite* logit through `jnp.where`, so they contribute
exactly exp(-1e9) = 0, never produce inf - inf = NaN, and receive exactly zero gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from qzhou_jax.numerics import matryoshka_truncate

Array = jax.Array

# Logit given to entries outside a denominator: finite (no NaN in max-subtraction), exp() underflows to 0.
_MASKED_LOGIT = -1e9
_HIGHEST = jax.lax.Precision.HIGHEST
TASKS = ("retrieval", "pair_score", "classification")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Every loss option in one hashable place (usable as a static jit argument).

    Build from a dict or ml_collections.ConfigDict with `LossConfig(**cfg)`.
    """

    tau: float = 0.02  # InfoNCE temperature (retrieval, classification); paper: 0.02
    cosent_tau: float = 0.02  # CoSENT temperature; the paper does not say if it shares tau (others use 0.05)
    hard_negatives: bool = True  # retrieval: the query's own hard negatives c[i, 1:]
    in_batch_docs: bool = True  # retrieval: every document (positive and negatives) of every other sample
    query_query: bool = True  # retrieval: other queries q_j, j != i
    doc_query: bool = False  # retrieval, GTE extra: s(d_i+, q_j), j != i
    doc_doc: bool = False  # retrieval, GTE extra: s(d_i+, d) over every other document of the batch
    false_negative_margin: float | None = None  # retrieval, Qwen3-Embedding style, e.g. 0.1
    matryoshka_dims: tuple[int, ...] | None = None  # e.g. (128, 256, 512, 1024, 3584); None = full dim only

    def __post_init__(self):
        for name in ("tau", "cosent_tau"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"LossConfig.{name} must be a positive number, got {value!r}")
        for name in ("hard_negatives", "in_batch_docs", "query_query", "doc_query", "doc_doc"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LossConfig.{name} must be a bool, got {getattr(self, name)!r}")
        margin = self.false_negative_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise ValueError(f"LossConfig.false_negative_margin must be a number or None, got {margin!r}")
        dims = self.matryoshka_dims
        if dims is not None:
            # ConfigDicts and YAML hand over lists; a tuple keeps the config hashable.
            dims = tuple(dims)
            if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
                raise ValueError(f"LossConfig.matryoshka_dims must be positive ints, got {self.matryoshka_dims!r}")
            object.__setattr__(self, "matryoshka_dims", dims or None)


# ----------------------------------------------------------------------------------------------- helpers


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_layout(a: Array, c: Array, cand_valid: Array | None) -> Array:
    """Validates shapes (static under jit) and returns cand_valid (all-True when None)."""
    _check(a.ndim == 2, f"anchor embeddings `a` must be [B, E], got shape {a.shape}")
    _check(
        c.ndim == 3 and c.shape[0] == a.shape[0] and c.shape[2] == a.shape[1],
        f"candidate embeddings `c` must be [B, C, E] = [{a.shape[0]}, C, {a.shape[1]}], got shape {c.shape}",
    )
    _check(c.shape[1] >= 1, "candidate embeddings `c` need at least the positive c[:, 0]")
    if cand_valid is None:
        return jnp.ones(c.shape[:2], dtype=bool)
    _check(cand_valid.shape == c.shape[:2], f"`cand_valid` must be [B, C] = {c.shape[:2]}, got {cand_valid.shape}")
    # The positive is always valid by construction of the layout; enforcing it keeps the numerator in.
    return jnp.asarray(cand_valid, dtype=bool).at[:, 0].set(True)


def _all_gathered(x: Array) -> Array:
    """x replicated on every device, for use as the column side of a global-batch similarity matrix.

    Under an Explicit-axes mesh (jax.make_mesh's default) a dot of two batch-sharded operands is a sharding type
    error, so the column operand is resharded explicitly; the row side stays sharded and so do the logits.
    Auto-mesh and unsharded arrays carry no spec and pass through (XLA inserts the all-gather itself).
    """
    sharding = jax.typeof(x).sharding
    if isinstance(sharding, jax.NamedSharding) and any(axis is not None for axis in sharding.spec):
        return jax.sharding.reshard(x, jax.NamedSharding(sharding.mesh, jax.P()))
    return x


def _sim(x: Array, y: Array) -> Array:
    """Cosine similarity of already-normalised rows: x [N, E] . y [M, E] -> [N, M], float32."""
    return jnp.einsum("ne,me->nm", x, y, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _dup_masks(ah: Array, ch: Array) -> tuple[Array, Array]:
    """Retrieval duplicate masks: (query columns [B, B], document columns [B, B*C]); True = not a negative."""
    ah = ah.astype(jnp.int32)
    ch = ch.astype(jnp.int32)
    b, n_cand = ch.shape
    rows = jnp.stack([ah, ch[:, 0]], axis=1)  # [B, 2]: q_i, d_i+

    def hits(col_hashes):  # [M] -> [B, M]: the column equals q_i or d_i+
        return jnp.any(rows[:, :, None] == col_hashes[None, None, :], axis=1)

    ah_cols, ch_cols = _all_gathered(ah), _all_gathered(ch)
    dup_q = hits(ah_cols) | hits(ch_cols[:, 0])  # q_j, or its partner d_j+
    partner = jnp.repeat(hits(ah_cols), n_cand, axis=1) & jnp.tile(jnp.arange(n_cand) == 0, b)[None, :]
    dup_doc = hits(ch_cols.reshape(-1)) | partner  # the document, or (for d_j+) its partner q_j
    return dup_q, dup_doc


def _count_masked(blocks: Sequence[tuple[Array, Array]], dups: Sequence[Array | None]) -> Array:
    return sum(jnp.sum(keep & dup) for (_, keep), dup in zip(blocks, dups) if dup is not None).astype(jnp.float32)


def _infonce(pos: Array, blocks: Sequence[tuple[Array, Array]], tau: float) -> tuple[Array, dict]:
    """-mean_i log(e^{pos_i/tau} / (e^{pos_i/tau} + sum of e^{s/tau} over unmasked negatives)).

    pos: [B] positive similarities. blocks: (similarities [B, K], keep-mask [B, K]) of negatives.
    Also returns top-1 accuracy: the positive outscores every kept negative (ties count as correct).
    """
    sims = jnp.concatenate([pos[:, None]] + [s for s, _ in blocks], axis=1)
    keep = jnp.concatenate([jnp.ones_like(pos, dtype=bool)[:, None]] + [m for _, m in blocks], axis=1)
    logits = jnp.where(keep, sims / tau, _MASKED_LOGIT)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos / tau)
    accuracy = jnp.mean((jnp.argmax(logits, axis=1) == 0).astype(jnp.float32))
    return loss, {"accuracy": accuracy, "num_negatives": jnp.mean(jnp.sum(keep[:, 1:], axis=1).astype(jnp.float32)),
                  "sim_spread": _masked_std(sims, keep)}


def _masked_std(x: Array, keep: Array) -> Array:
    """Std of the kept entries: the spread of the cosines a loss ranks; near 0 means collapse (docs/learning.md)."""
    keep = keep.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(keep), 1.0)
    mean = jnp.sum(x * keep) / n
    return jax.lax.stop_gradient(jnp.sqrt(jnp.sum(keep * (x - mean) ** 2) / n))


# ------------------------------------------------------------------------------------------------ losses


def _retrieval(a, c, cand_valid, *, tau, hard_negatives, in_batch_docs, query_query, doc_query, doc_doc,
               false_negative_margin, anchor_hash=None, cand_hash=None):
    cand_valid = _check_layout(a, c, cand_valid)
    q = a.astype(jnp.float32)
    c = c.astype(jnp.float32)
    b, n_cand, _ = c.shape
    docs = _all_gathered(c).reshape(b * n_cand, -1)  # row j * C + k is document k of sample j
    docs_valid = _all_gathered(cand_valid).reshape(b * n_cand)
    q_cols = _all_gathered(q)
    d_pos = c[:, 0]

    eye = jnp.eye(b, dtype=bool)
    own = jnp.repeat(eye, n_cand, axis=1)  # [B, B*C]: the column is a document of sample i itself
    is_pos = own & jnp.tile(jnp.arange(n_cand) == 0, b)[None, :]  # column i*C: d_i+

    s_qd = _sim(q, docs)  # [B, B*C]
    pos = jnp.sum(jnp.where(is_pos, s_qd, 0.0), axis=1)  # same numbers as in the matrix (same matmul)

    qd_keep = docs_valid[None, :] & ~is_pos & ((own & hard_negatives) | (~own & in_batch_docs))
    blocks, kinds = [(s_qd, qd_keep)], ["doc"]
    if query_query:
        blocks.append((_sim(q, q_cols), ~eye))
        kinds.append("query")
    if doc_query:
        blocks.append((_sim(d_pos, q_cols), ~eye))
        kinds.append("query")
    if doc_doc:
        blocks.append((_sim(d_pos, docs), docs_valid[None, :] & ~is_pos))
        kinds.append("doc")
    masked = None
    if anchor_hash is not None and cand_hash is not None:
        dup_q, dup_doc = _dup_masks(anchor_hash, cand_hash)
        dups = [dup_q if kind == "query" else dup_doc for kind in kinds]
        masked = _count_masked(blocks, dups)
        blocks = [(s, keep & ~dup) for (s, keep), dup in zip(blocks, dups)]
    if false_negative_margin is not None:
        # A "negative" scoring above the positive by more than the margin is likely an unlabelled positive.
        limit = (pos + false_negative_margin)[:, None]
        blocks = [(s, keep & (s <= limit)) for s, keep in blocks]
    loss, metrics = _infonce(pos, blocks, tau)
    if masked is not None:
        metrics["masked_duplicates"] = masked
    return loss, metrics


def retrieval_infonce(a: Array, c: Array, cand_valid: Array | None, *, tau: float = 0.02,
                      hard_negatives: bool = True, in_batch_docs: bool = True, query_query: bool = True,
                      doc_query: bool = False, doc_doc: bool = False,
                      false_negative_margin: float | None = None) -> Array:
    """Retrieval InfoNCE with GTE / Qwen3-Embedding style denominators.

    For query i, numerator e^{s(q_i, d_i+)/tau}; the denominator holds the positive plus, per switch:
      hard_negatives  its own hard negatives c[i, 1:]
      in_batch_docs   every document (positive and hard negatives) of every other sample j != i
      query_query     s(q_i, q_j), j != i
      doc_query       s(d_i+, q_j), j != i                     (GTE improved contrastive loss)
      doc_doc         s(d_i+, d) for every other document d of the batch, own hard negatives included (GTE)
    false_negative_margin drops every negative term (of any kind) with s > s(q_i, d_i+) + margin.
    Invalid candidates never enter. Returns the mean over queries of -log(num / denom), float32.
    """
    loss, _ = _retrieval(a, c, cand_valid, tau=tau, hard_negatives=hard_negatives, in_batch_docs=in_batch_docs,
                         query_query=query_query, doc_query=doc_query, doc_doc=doc_doc,
                         false_negative_margin=false_negative_margin)
    return loss


def _cosent(a, b, score, *, tau, anchor_hash=None, cand_hash=None):
    _check(a.ndim == 2 and b.shape == a.shape, f"CoSENT needs a and b both [B, E], got {a.shape} and {b.shape}")
    _check(score.shape == a.shape[:1], f"CoSENT `score` must be [B] = {a.shape[:1]}, got {score.shape}")
    s = jnp.einsum("be,be->b", a.astype(jnp.float32), b.astype(jnp.float32), precision=_HIGHEST)
    gold = score.astype(jnp.float32)
    s_cols, gold_cols = _all_gathered(s), _all_gathered(gold)
    # Row i, column k: pair i is gold-ranked above pair k, penalise e^{(s_k - s_i)/tau}.
    above = gold[:, None] > gold_cols[None, :]
    masked = None
    if anchor_hash is not None and cand_hash is not None:  # the same two texts (either order) in both pairs
        ha, hb = anchor_hash.astype(jnp.int32), cand_hash.reshape(-1).astype(jnp.int32)
        key = jnp.stack([jnp.minimum(ha, hb), jnp.maximum(ha, hb)], axis=1)
        key_cols = _all_gathered(key)
        same = jnp.all(key[:, None, :] == key_cols[None, :, :], axis=-1)
        masked = jnp.sum(above & same).astype(jnp.float32)
        above = above & ~same
    diffs = jnp.where(above, (s_cols[None, :] - s[:, None]) / tau, _MASKED_LOGIT)
    # log(1 + sum e^diffs) = logsumexp over [0, diffs]; with no ordered pair, logaddexp(0, ~-1e9) = 0 exactly.
    loss = jnp.logaddexp(0.0, jax.nn.logsumexp(diffs))
    # Fraction of ordered pairs whose similarities agree with the gold order (a cheap ranking metric).
    n_above = jnp.sum(above)
    concordant = jnp.sum(above & (s[:, None] > s_cols[None, :])) / jnp.maximum(n_above, 1)
    metrics = {"pair_accuracy": concordant.astype(jnp.float32), "num_ordered_pairs": n_above.astype(jnp.float32),
               "sim_spread": jax.lax.stop_gradient(jnp.std(s))}
    if masked is not None:
        metrics["masked_duplicates"] = masked
    return loss, metrics


def cosent(a: Array, b: Array, score: Array, *, tau: float = 0.02) -> Array:
    """CoSENT: log(1 + sum over batch pairs i, k with gold_i > gold_k of e^{(s_k - s_i)/tau}), s_i = cos(a_i, b_i)."""
    loss, _ = _cosent(a, b, score, tau=tau)
    return loss


def _classification(a, c, cand_valid, labels, *, tau, anchor_hash=None, cand_hash=None):
    cand_valid = _check_layout(a, c, cand_valid)
    b, n_cand, _ = c.shape
    _check(labels.shape == (b, 1 + n_cand),
           f"classification `labels` must be [B, 1 + C] = {(b, 1 + n_cand)}, got {labels.shape}")
    x = a.astype(jnp.float32)
    c = c.astype(jnp.float32)
    anchor_label = labels[:, 0]
    pos = jnp.einsum("be,be->b", x, c[:, 0], precision=_HIGHEST)

    other = ~jnp.eye(b, dtype=bool)
    blocks = [(_sim(x, _all_gathered(x)), other & (anchor_label[:, None] != _all_gathered(anchor_label)[None, :]))]
    if n_cand > 1:
        # Negatives of every sample, own ones included; other samples' positives stay out by design.
        negs = _all_gathered(c[:, 1:]).reshape(b * (n_cand - 1), -1)
        neg_valid = _all_gathered(cand_valid[:, 1:]).reshape(-1)
        neg_label = _all_gathered(labels[:, 2:]).reshape(-1)
        blocks.append((_sim(x, negs), neg_valid[None, :] & (anchor_label[:, None] != neg_label[None, :])))
    if anchor_hash is None or cand_hash is None:
        return _infonce(pos, blocks, tau)
    rows = jnp.stack([anchor_hash, cand_hash[:, 0]], axis=1).astype(jnp.int32)  # text i, its positive
    cols = [_all_gathered(anchor_hash.astype(jnp.int32)), _all_gathered(cand_hash[:, 1:].astype(jnp.int32)).reshape(-1)]
    dups = [jnp.any(rows[:, :, None] == h[None, None, :], axis=1) for h in cols[: len(blocks)]]
    masked = _count_masked(blocks, dups)
    loss, metrics = _infonce(pos, [(s, keep & ~dup) for (s, keep), dup in zip(blocks, dups)], tau)
    return loss, {**metrics, "masked_duplicates": masked}


def classification_infonce(a: Array, c: Array, cand_valid: Array | None, labels: Array, *,
                           tau: float = 0.02) -> Array:
    """Example-based classification InfoNCE.

    Anchor i: numerator its positive c[i, 0]; denominator the positive + its negatives c[i, 1:] + other anchors
    a_j (j != i) + their negatives c[j, 1:], minus every item sharing anchor i's label (not a negative).
    Other samples' positives c[j, 0] never enter.
    """
    loss, _ = _classification(a, c, cand_valid, labels, tau=tau)
    return loss


# ------------------------------------------------------------------------------------------- Matryoshka


def _truncate(x: Array, dim: int) -> Array:
    _check(dim <= x.shape[-1], f"Matryoshka dim {dim} exceeds the embedding dim {x.shape[-1]}")
    return matryoshka_truncate(x, dim)


def matryoshka(loss_fn: Callable[..., Array], dims: Sequence[int] | None) -> Callable[..., Array]:
    """Wraps loss_fn(x, y, *rest) so it is averaged over x, y truncated to each of `dims` and re-normalised.

    x, y are the two embedding arguments (a and c, or a and b for CoSENT). None or empty dims: loss_fn itself.
    """
    if not dims:
        return loss_fn
    dims = tuple(dims)

    def wrapped(x, y, *args, **kwargs):
        losses = [loss_fn(_truncate(x, d), _truncate(y, d), *args, **kwargs) for d in dims]
        return sum(losses) / len(losses)

    return wrapped


# ------------------------------------------------------------------------------------------- dispatcher


def task_loss(task: str, a: Array, c: Array, cand_valid: Array | None = None, *, score: Array | None = None,
              labels: Array | None = None, config: LossConfig = LossConfig(), anchor_hash: Array | None = None,
              cand_hash: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """The loss of one batch, chosen by its task type, and cheap metrics.

    task: 'retrieval' | 'pair_score' (CoSENT on a vs c[:, 0]; needs `score`) | 'classification' (needs
    `labels`). With config.matryoshka_dims the loss is the mean over dims; metrics then come from the largest
    dim, plus one 'loss@{dim}' entry per dim. `anchor_hash` [B] / `cand_hash` [B, C] (normalised-text hashes)
    switch on the duplicate masks (module docstring). Returns (scalar float32 loss, {name: scalar}).
    """
    if (anchor_hash is None) != (cand_hash is None):
        raise ValueError("pass both anchor_hash and cand_hash, or neither")
    if cand_hash is not None:
        _check(anchor_hash.shape == a.shape[:1] and cand_hash.shape == c.shape[:2],
               f"anchor_hash must be [B] and cand_hash [B, C] = {c.shape[:2]}, got {anchor_hash.shape} and "
               f"{cand_hash.shape}")
    hashes = dict(anchor_hash=anchor_hash, cand_hash=cand_hash)
    if task == "retrieval":
        def fn(x, y):
            return _retrieval(x, y, cand_valid, tau=config.tau, hard_negatives=config.hard_negatives,
                              in_batch_docs=config.in_batch_docs, query_query=config.query_query,
                              doc_query=config.doc_query, doc_doc=config.doc_doc,
                              false_negative_margin=config.false_negative_margin, **hashes)
    elif task == "pair_score":
        _check(score is not None, "task 'pair_score' needs `score` (gold scores, [B])")
        _check(c.ndim == 3 and c.shape[1] == 1, f"task 'pair_score' needs c of shape [B, 1, E], got {c.shape}")

        def fn(x, y):
            return _cosent(x, y[:, 0], score, tau=config.cosent_tau, **hashes)
    elif task == "classification":
        _check(labels is not None, "task 'classification' needs `labels` ([B, 1 + C])")

        def fn(x, y):
            return _classification(x, y, cand_valid, labels, tau=config.tau, **hashes)
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")

    dims = config.matryoshka_dims
    if not dims:
        loss, metrics = fn(a, c)
        return loss, {"loss": loss, **metrics}
    results = {d: fn(_truncate(a, d), _truncate(c, d)) for d in dims}
    loss = sum(r[0] for r in results.values()) / len(dims)
    metrics = {"loss": loss, **results[max(dims)][1]}
    metrics.update({f"loss@{d}": r[0] for d, r in results.items()})
    return loss, metrics


def loss_config_from(cfg: Mapping | None) -> LossConfig:
    """LossConfig from a dict / ConfigDict, naming any unknown key (a plain TypeError would not)."""
    cfg = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(LossConfig)}
    unknown = sorted(set(cfg) - known)
    _check(not unknown, f"unknown loss option(s) {unknown}; known: {sorted(known)}")
    return LossConfig(**cfg)
