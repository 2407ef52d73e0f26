"""The chunked embedding cache: kill -9 mid-encode, rerun, finished chunks reused (counted), output identical;
a changed length setting never reads stale vectors; chunked encoding equals one-shot encoding."""
import glob
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from qzhou_jax.cli import mine as mine_cli
from qzhou_jax.encode import Encoder
from qzhou_jax.mining.cache import KILL_ENV, encode_cached
from qzhou_jax.mining.corpus import build_corpus, read_corpus_file, read_rows
from tests.mining.conftest import INSTRUCTION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 32


def _args(model_dir, data, out, cache, *extra):
    return ["--model", model_dir, "--input", data["input"], "--corpus", data["corpus"], "--output", str(out),
            "--cache", str(cache), "--instruction", INSTRUCTION, "--batch-size", "16", "--max-length", "64",
            "--encode-chunk", str(CHUNK), "--seed", "2", *extra]


def _chunks(cache, label="passages"):
    return sorted(glob.glob(os.path.join(str(cache), f"{label}-*", "chunk_*.npy")))


@pytest.mark.slow
def test_kill_mid_encode_then_rerun_reuses_chunks(tmp_path, model_dir, data):
    cache, out = tmp_path / "cache", tmp_path / "out.jsonl"
    env = dict(os.environ, **{KILL_ENV: "3"}, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "qzhou_jax.mine", *_args(model_dir, data, out, cache)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(_chunks(cache)) == 3 and not out.exists()
    assert not glob.glob(os.path.join(str(cache), "*", "*.tmp-*"))  # nothing half-written left behind

    n_passages = len(build_corpus(read_rows(data["input"]), read_corpus_file(data["corpus"])))
    total, query_chunks = -(-n_passages // CHUNK), -(-len(data["rows"]) // CHUNK)
    stats = mine_cli.main(_args(model_dir, data, out, cache))
    assert stats["reused_chunks"] == 3
    assert stats["encoded_chunks"] == total - 3 + query_chunks  # the rest of the passages, and the queries
    assert len(_chunks(cache)) == total

    fresh = tmp_path / "fresh.jsonl"
    fresh_stats = mine_cli.main(_args(model_dir, data, fresh, tmp_path / "cache2"))
    assert fresh_stats["reused_chunks"] == 0 and fresh_stats["encoded_chunks"] == total + query_chunks
    assert out.read_text() == fresh.read_text()

    # A full rerun encodes nothing; another max length is another cache entry, never the stale one.
    again = mine_cli.main(_args(model_dir, data, tmp_path / "again.jsonl", cache))
    assert again["encoded_chunks"] == 0 and again["reused_chunks"] == total + query_chunks
    other = mine_cli.main(_args(model_dir, data, tmp_path / "short.jsonl", cache, "--max-length", "8"))
    assert other["reused_chunks"] == 0 and len(_chunks(cache)) == 2 * total


def test_chunked_cache_equals_one_shot_encoding(tmp_path, model_dir, data):
    encoder = Encoder.from_pretrained(model_dir, max_length=64, batch_size=16)
    texts = build_corpus(read_rows(data["input"]), read_corpus_file(data["corpus"])).texts[:100]
    cached = encode_cached(encoder, texts, cache_dir=str(tmp_path), label="passages", model_fingerprint="m",
                           chunk_size=CHUNK, progress=False)
    expected = encoder.encode(texts)
    np.testing.assert_allclose(cached.rows(0, len(texts)), expected, atol=2e-5)
    np.testing.assert_allclose(cached.rows(30, 70), expected[30:70], atol=2e-5)
    np.testing.assert_array_equal(cached.rows(95, 110)[5:], 0)  # past the end: padding
    np.testing.assert_allclose(cached.take(np.array([99, 0, 33])), expected[[99, 0, 33]], atol=2e-5)
