"""The sharded search against a full NumPy sort, including exact ties across device boundaries."""
import jax
import numpy as np
import pytest

from qzhou_jax.mining.search import ShardedSearch, passage_mesh


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("devices, chunk", [(1, 7), (8, 5), (8, 1000), (3, 4)])
def test_top_k_equals_stable_full_sort(devices, chunk):
    rng = np.random.default_rng(0)
    corpus = _unit(rng.normal(size=(203, 16)))
    corpus[150] = corpus[3]  # exact ties on different devices: the lower index must come first
    corpus[77] = corpus[3]
    queries = _unit(rng.normal(size=(37, 16)))
    queries[0] = corpus[3]
    search = ShardedSearch(lambda a, b: np.concatenate([corpus, np.zeros((b, 16), np.float32)])[a:b],
                           len(corpus), 16, k=25, query_batch=16, corpus_chunk=chunk,
                           mesh=passage_mesh(jax.devices()[:devices]))
    got = [search.search(queries[i:i + 16]) for i in range(0, len(queries), 16)]
    scores, indices = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    full = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    expected = np.argsort(-np.round(full, 5), axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-6)
    assert list(indices[0, :3]) == [3, 77, 150]


def test_bad_sizes():
    rows = lambda a, b: np.zeros((b - a, 4), np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="top 11 asked of a corpus of 10"):
        ShardedSearch(rows, 10, 4, k=11)
    with pytest.raises(ValueError, match="corpus is empty"):
        ShardedSearch(rows, 0, 4, k=1)
