"""Chunked top-k cosine search against brute force, including ties and a last partial chunk."""
import numpy as np
import pytest

from qzhou_jax.eval import metrics, search


def _brute_force(q, c, k, normalize=True):
    q, c = np.asarray(q, np.float64), np.asarray(c, np.float64)
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    full = q @ c.T
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]  # ties: lower corpus index first
    return np.take_along_axis(full, order, axis=1), order


def test_matches_brute_force_with_partial_chunk_and_partial_query_batch():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(11, 16)), rng.normal(size=(37, 16))  # chunks 8,8,8,8,5; query batches 4,4,3
    scores, idx = search.cosine_top_k(q, c, 10, corpus_chunk_size=8, query_batch_size=4)
    ref_scores, ref_idx = _brute_force(q, c, 10)
    assert scores.shape == idx.shape == (11, 10) and idx.dtype == np.int64
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_array_equal(idx, ref_idx)  # random scores: no near-ties at this size


def test_exact_ties_come_out_by_ascending_corpus_index():
    # Small integers: every dot product is exact in float32, so ties are real ties.
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)
    c = base[rng.integers(0, 6, size=23)]  # many duplicate rows, spread over chunk boundaries
    q = rng.integers(-2, 3, size=(5, 4)).astype(np.float32)
    for chunk in (3, 7, 23):
        scores, idx = search.cosine_top_k(q, c, 9, corpus_chunk_size=chunk, query_batch_size=2, normalize=False)
        ref_scores, ref_idx = _brute_force(q, c, 9, normalize=False)
        np.testing.assert_array_equal(scores, ref_scores)
        np.testing.assert_array_equal(idx, ref_idx)


def test_k_is_clamped_and_chunk_smaller_than_k():
    rng = np.random.default_rng(2)
    q, c = rng.normal(size=(3, 5)), rng.normal(size=(7, 5))
    scores, idx = search.cosine_top_k(q, c, 50, corpus_chunk_size=2)
    assert idx.shape == (3, 7)
    assert all(sorted(row) == list(range(7)) for row in idx)  # every doc exactly once
    np.testing.assert_array_equal(idx, _brute_force(q, c, 7)[1])


def test_kernel_compiles_once_for_all_chunks():
    rng = np.random.default_rng(3)
    q, c = rng.normal(size=(6, 12)), rng.normal(size=(53, 12))  # odd shapes no other test uses
    before = search.merge_chunk._cache_size()
    search.cosine_top_k(q, c, 4, corpus_chunk_size=10, query_batch_size=4)  # 6 chunks x 2 query batches
    assert search.merge_chunk._cache_size() == before + 1


def test_exact_search_feeds_retrieval_metrics():
    rng = np.random.default_rng(4)
    corpus = rng.normal(size=(40, 8))
    queries = corpus[[3, 17, 29]] + 0.01 * rng.normal(size=(3, 8))  # each query near one document
    doc_ids = [f"doc{i}" for i in range(40)]
    run = search.exact_search(queries, corpus, ["a", "b", "c"], doc_ids, k=5, corpus_chunk_size=16)
    assert list(run) == ["a", "b", "c"] and all(len(v) == 5 for v in run.values())
    qrels = {"a": {"doc3": 1}, "b": {"doc17": 1}, "c": {"doc29": 1}}
    assert metrics.retrieval_metrics(run, qrels, k_values=[1])["ndcg_at_1"] == 1.0


def test_bad_input_raises():
    ok = np.ones((2, 3))
    with pytest.raises(ValueError, match="dim 3 but the corpus has dim 4"):
        search.cosine_top_k(ok, np.ones((5, 4)), 2)
    with pytest.raises(ValueError, match="corpus: row 1 is all zeros"):
        search.cosine_top_k(ok, np.array([[1.0, 0, 0], [0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="queries: non-finite value in row 0"):
        search.cosine_top_k(np.array([[np.inf, 0, 0]]), ok, 1)
    with pytest.raises(ValueError, match="3 doc ids for 2 corpus"):
        search.exact_search(ok, ok, ["q1", "q2"], ["a", "b", "c"])
