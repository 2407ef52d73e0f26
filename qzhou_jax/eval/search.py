"""Exact top-k cosine search of queries against a corpus, in fixed-shape chunks.

The full [N_queries, N_corpus] score matrix is never built: the corpus is streamed in chunks of
`corpus_chunk_size` rows (the last one zero-padded, padded columns masked to -inf) and queries in batches of
`query_batch_size` rows (the last one padded), so the jitted kernel sees one shape and compiles once. Each
kernel call scores one query batch against one chunk, takes the chunk's top k with `lax.top_k` and merges it
into the running top k. Memory: one [query_batch_size, corpus_chunk_size] block plus the [N_queries, k]
results. Each corpus chunk goes to the device once.

Ties: `lax.top_k` puts the lower position first among equal values, and the running top k (earlier, lower
corpus indices) is placed before the new chunk's candidates, so equal scores come out by ascending corpus
index -- the same order as a stable descending sort of the full score row.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _as_f32(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [N, D] embedding matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: non-finite value in row {int(np.argwhere(~np.isfinite(x))[0, 0])}")
    return x


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros (no direction)")
    return x / norms


@functools.partial(jax.jit, static_argnames=("k",))
def merge_chunk(queries, chunk, n_valid, offset, best_scores, best_idx, *, k: int):
    """Score one query batch [B, D] against one corpus chunk [C, D]; merge into the running top k [B, k].

    `n_valid` (traced) masks the chunk's padding rows; `offset` (traced) is the chunk's first corpus index.
    """
    sims = jnp.dot(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)  # [B, C]
    sims = jnp.where(jnp.arange(chunk.shape[0])[None, :] < n_valid, sims, -jnp.inf)
    chunk_scores, chunk_idx = jax.lax.top_k(sims, min(k, chunk.shape[0]))
    scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
    idx = jnp.concatenate([best_idx, chunk_idx + offset], axis=1)
    new_scores, pos = jax.lax.top_k(scores, k)
    return new_scores, jnp.take_along_axis(idx, pos, axis=1)


def cosine_top_k(
    queries: Any,
    corpus: Any,
    k: int,
    *,
    corpus_chunk_size: int = 16384,
    query_batch_size: int = 1024,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine similarity: returns (scores float32 [Q, k], corpus indices int64 [Q, k]),
    each row sorted by score descending (ties by ascending corpus index).

    k larger than the corpus is clamped to the corpus size (as MTEB does). With normalize=False the inputs
    are taken as already unit-norm and the score is the plain dot product (a zero row then scores 0).
    Chunk and batch sizes shrink to the corpus / query count when those are smaller.
    """
    q, c = _as_f32(queries, "queries"), _as_f32(corpus, "corpus")
    if normalize:
        q, c = _unit_rows(q, "queries"), _unit_rows(c, "corpus")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but the corpus has dim {c.shape[1]}")
    if len(c) == 0:
        raise ValueError("corpus is empty")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if corpus_chunk_size < 1 or query_batch_size < 1:
        raise ValueError(f"chunk/batch sizes must be >= 1, got {corpus_chunk_size}, {query_batch_size}")
    n_q, n_c = len(q), len(c)
    k = min(k, n_c)
    if n_q == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    chunk_size, batch_size = min(corpus_chunk_size, n_c), min(query_batch_size, n_q)

    q_batches = [_pad_rows(q[s : s + batch_size], batch_size) for s in range(0, n_q, batch_size)]
    best = [(jnp.full((batch_size, k), -jnp.inf, jnp.float32), jnp.full((batch_size, k), -1, jnp.int32))
            for _ in q_batches]
    q_batches = [jnp.asarray(b) for b in q_batches]
    for start in range(0, n_c, chunk_size):
        rows = c[start : start + chunk_size]
        chunk = jnp.asarray(_pad_rows(rows, chunk_size))
        n_valid, offset = jnp.int32(len(rows)), jnp.int32(start)
        best = [merge_chunk(qb, chunk, n_valid, offset, s, i, k=k) for qb, (s, i) in zip(q_batches, best)]
    scores = np.concatenate([np.asarray(s) for s, _ in best])[:n_q]
    indices = np.concatenate([np.asarray(i) for _, i in best])[:n_q].astype(np.int64)
    return scores, indices


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), x.shape[1]), x.dtype)])


def to_run(scores: np.ndarray, indices: np.ndarray, query_ids: Sequence[str],
           doc_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """(scores, indices) from `cosine_top_k` -> a run {query_id: {doc_id: score}} for metrics.retrieval_*."""
    if len(query_ids) != len(scores):
        raise ValueError(f"{len(query_ids)} query ids for {len(scores)} result rows")
    if len(set(query_ids)) != len(query_ids) or len(set(doc_ids)) != len(doc_ids):
        raise ValueError("query ids and doc ids must be unique (a run maps each id once)")
    return {qid: {doc_ids[j]: float(s) for s, j in zip(row_s, row_i)}
            for qid, row_s, row_i in zip(query_ids, scores, indices)}


def exact_search(query_emb: Any, corpus_emb: Any, query_ids: Sequence[str], doc_ids: Sequence[str],
                 k: int = 1000, **kwargs: Any) -> dict[str, dict[str, float]]:
    """Top-k cosine run for retrieval evaluation (MTEB retrieves the top 1000 per query)."""
    if len(doc_ids) != len(corpus_emb):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(corpus_emb)} corpus embeddings")
    scores, indices = cosine_top_k(query_emb, corpus_emb, k, **kwargs)
    return to_run(scores, indices, query_ids, doc_ids)
