"""Retrieval InfoNCE with GTE / Qwen3-Embedding style denominators (docs/recipe.md section 3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from qzhou_jax.losses.config import LossConfig
from qzhou_jax.losses.core import all_gathered, candidate_valid, count_masked, duplicate_hashes, infonce, matches, sim

if TYPE_CHECKING:
    from qzhou_jax.batch import Batch

Array = jax.Array


def retrieval_infonce(a: Array, c: Array, batch: "Batch", config: LossConfig) -> tuple[Array, dict[str, Array]]:
    """Retrieval InfoNCE: each query against its positive, its hard negatives and the rest of the global batch.

    Inputs: a [B, E] the queries q_i; c [B, C, E] their documents, c[:, 0] the positive d_i+, c[:, 1:] hard
    negatives (C = 1: none); both L2-normalised (any float dtype; the maths is float32).
    Batch fields: `cand_valid` [B, C] (None: every candidate valid; False drops a padding candidate from every
    denominator; the positive is always valid); optional `anchor_hash` [B] + `cand_hash` [B, C] (duplicate
    masks, below). No labels.
    Config: tau (temperature), the switches hard_negatives, in_batch_docs, query_query, doc_query, doc_doc, and
    false_negative_margin.

    Numerator: e^{s(q_i, d_i+)/tau}. Denominator: the numerator's term plus, per switch,
      hard_negatives  its own hard negatives c[i, 1:]
      in_batch_docs   every document (positive and hard negatives) of every other sample j != i
      query_query     s(q_i, q_j), j != i
      doc_query       s(d_i+, q_j), j != i                     (GTE improved contrastive loss)
      doc_doc         s(d_i+, d) for every other document d of the batch, own hard negatives included (GTE)
    false_negative_margin drops every negative term (of any kind) with s > s(q_i, d_i+) + margin: a "negative"
    scoring above the positive by more than the margin is likely an unlabelled positive (Qwen3-Embedding).
    Duplicate masks (with both hashes): a negative term is dropped when its text is identical to q_i or d_i+, or
    when it is a (query, positive) partner of such a text: q_j / d_j+ whose pair partner d_j+ / q_j is identical
    to q_i or d_i+ (a duplicated query's positive is a positive, not a negative; two queries sharing a positive
    are not negatives of each other).

    Loss: the mean over queries of -log(numerator / denominator), float32 scalar.
    Metrics: accuracy (top-1: the positive outscores every kept negative), num_negatives (kept negatives per
    query, mean), sim_spread (std over every denominator similarity), masked_duplicates (with hashes: the terms
    the duplicate masks dropped).
    """
    cand_valid = candidate_valid(batch, c)
    hashes = duplicate_hashes(batch)
    q = a.astype(jnp.float32)
    c = c.astype(jnp.float32)
    b, n_cand, _ = c.shape
    docs = all_gathered(c).reshape(b * n_cand, -1)  # row j * C + k is document k of sample j
    docs_valid = all_gathered(cand_valid).reshape(b * n_cand)
    q_cols = all_gathered(q)
    d_pos = c[:, 0]

    eye = jnp.eye(b, dtype=bool)
    own = jnp.repeat(eye, n_cand, axis=1)  # [B, B*C]: the column is a document of sample i itself
    is_pos = own & jnp.tile(jnp.arange(n_cand) == 0, b)[None, :]  # column i*C: d_i+

    s_qd = sim(q, docs)  # [B, B*C]
    pos = jnp.sum(jnp.where(is_pos, s_qd, 0.0), axis=1)  # same numbers as in the matrix (same matmul)

    qd_keep = docs_valid[None, :] & ~is_pos & ((own & config.hard_negatives) | (~own & config.in_batch_docs))
    blocks, kinds = [(s_qd, qd_keep)], ["doc"]
    if config.query_query:
        blocks.append((sim(q, q_cols), ~eye))
        kinds.append("query")
    if config.doc_query:
        blocks.append((sim(d_pos, q_cols), ~eye))
        kinds.append("query")
    if config.doc_doc:
        blocks.append((sim(d_pos, docs), docs_valid[None, :] & ~is_pos))
        kinds.append("doc")
    masked = None
    if hashes is not None:
        dup_q, dup_doc = duplicate_masks(*hashes)
        dups = [dup_q if kind == "query" else dup_doc for kind in kinds]
        masked = count_masked(blocks, dups)
        blocks = [(s, keep & ~dup) for (s, keep), dup in zip(blocks, dups)]
    if config.false_negative_margin is not None:
        limit = (pos + config.false_negative_margin)[:, None]
        blocks = [(s, keep & (s <= limit)) for s, keep in blocks]
    loss, metrics = infonce(pos, blocks, config.tau)
    if masked is not None:
        metrics["masked_duplicates"] = masked
    return loss, metrics


def duplicate_masks(ah: Array, ch: Array) -> tuple[Array, Array]:
    """Retrieval duplicate masks from anchor_hash [B] / cand_hash [B, C]: (query columns [B, B], document columns
    [B, B*C]); True = the column is not a negative of row i."""
    b, n_cand = ch.shape
    rows = jnp.stack([ah, ch[:, 0]], axis=1)  # [B, 2]: q_i, d_i+
    ah_cols, ch_cols = all_gathered(ah), all_gathered(ch)
    dup_q = matches(rows, ah_cols) | matches(rows, ch_cols[:, 0])  # q_j, or its partner d_j+
    partner = jnp.repeat(matches(rows, ah_cols), n_cand, axis=1) & jnp.tile(jnp.arange(n_cand) == 0, b)[None, :]
    dup_doc = matches(rows, ch_cols.reshape(-1)) | partner  # the document, or (for d_j+) its partner q_j
    return dup_q, dup_doc
