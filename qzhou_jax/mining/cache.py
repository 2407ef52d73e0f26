"""Embeddings of a text list, computed in chunks and cached on disk, so a killed run loses at most one chunk.

Layout: `CACHE/<label>-<key>/chunk_NNNNNN.npy` ([rows, D] float32) plus `manifest.json`. The key digests the
model fingerprint, the texts, the chunk size and the output dim, so a changed model, corpus or length setting
never reads stale vectors. Each chunk is written to a temporary file, fsynced and renamed into place: a chunk
file is complete or absent. With several processes, chunk i is encoded by process i % P and the others read it
from the shared directory after a barrier (the cache must be on a filesystem all hosts see, like the workdir).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from qzhou_jax import atomic

log = logging.getLogger(__name__)

KILL_ENV = "QZHOU_MINE_KILL_AFTER_CHUNKS"  # test hook: SIGKILL this process after encoding N chunks


@dataclasses.dataclass
class CachedEmbeddings:
    """[n, dim] float32 unit vectors stored as chunk files; rows are read through memory maps."""

    directory: str
    n: int
    dim: int
    chunk_size: int
    encoded_chunks: int = 0   # computed by this process in this call
    reused_chunks: int = 0    # found complete on disk (this process's share)

    @property
    def num_chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    def chunk_path(self, i: int) -> str:
        return os.path.join(self.directory, f"chunk_{i:06d}.npy")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32; rows at or past n are zeros (padding)."""
        out = np.zeros((max(stop - start, 0), self.dim), np.float32)
        valid_stop = min(stop, self.n)
        chunks = range(start // self.chunk_size, (valid_stop - 1) // self.chunk_size + 1) if valid_stop > start else ()
        for i in chunks:
            lo = i * self.chunk_size
            chunk = np.load(self.chunk_path(i), mmap_mode="r")
            a, b = max(start, lo), min(stop, lo + len(chunk))
            out[a - start:b - start] = chunk[a - lo:b - lo]
        return out

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        out = np.zeros((len(indices), self.dim), np.float32)
        for i in np.unique(indices // self.chunk_size):
            chunk = np.load(self.chunk_path(int(i)), mmap_mode="r")
            sel = indices // self.chunk_size == i
            out[sel] = chunk[indices[sel] - i * self.chunk_size]
        return out


def cache_key(model_fingerprint: str, texts: Sequence[str], chunk_size: int, dim: int | None) -> str:
    digest = hashlib.sha256(f"{model_fingerprint}|{chunk_size}|{dim}|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def encode_cached(encoder, texts: Sequence[str], *, cache_dir: str, label: str, model_fingerprint: str,
                  chunk_size: int = 4096, dim: int | None = None, progress: bool = True) -> CachedEmbeddings:
    """Encodes `texts` as given (prompts already applied) into the cache, reusing finished chunks."""
    if not texts:
        raise ValueError(f"{label}: nothing to encode")
    out_dim = dim or encoder.config.hidden_size
    key = cache_key(model_fingerprint, texts, chunk_size, dim)
    directory = os.path.join(cache_dir, f"{label}-{key}")
    os.makedirs(directory, exist_ok=True)
    cached = CachedEmbeddings(directory, len(texts), out_dim, chunk_size)
    if jax.process_index() == 0:
        _write_json(os.path.join(directory, "manifest.json"),
                    dict(label=label, n=len(texts), dim=out_dim, chunk_size=chunk_size, model=model_fingerprint))
    mine = [i for i in range(cached.num_chunks) if i % jax.process_count() == jax.process_index()]
    todo = [i for i in mine if not _complete(cached, i)]
    cached.reused_chunks = len(mine) - len(todo)
    todo_rows = sum(min(chunk_size, len(texts) - i * chunk_size) for i in todo)
    kill_after = int(os.environ.get(KILL_ENV, "0"))
    start, done = time.time(), 0
    if progress and cached.reused_chunks:
        print(f"{label}: {cached.reused_chunks}/{len(mine)} chunks reused from {directory}", file=sys.stderr)
    for i in todo:
        lo = i * chunk_size
        emb = encoder.encode(texts[lo:lo + chunk_size], None, dim=dim)
        _write_npy(cached.chunk_path(i), emb)
        cached.encoded_chunks += 1
        done += len(emb)
        if progress:
            rate = done / max(time.time() - start, 1e-9)
            print(f"\r{label}: {done}/{todo_rows} encoded ({rate:.1f} {label}/s, ETA "
                  f"{(todo_rows - done) / rate:.0f}s), chunk {cached.encoded_chunks}/{len(todo)}",
                  end="", file=sys.stderr, flush=True)
        if kill_after and cached.encoded_chunks == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    if progress and todo:
        print(file=sys.stderr)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"mine-encode-{label}-{key}")
    missing = [i for i in range(cached.num_chunks) if not os.path.exists(cached.chunk_path(i))]
    if missing:
        raise RuntimeError(f"{directory}: chunks {missing[:5]} missing after encoding (is the cache directory "
                           f"on a filesystem every host sees?)")
    return cached


def _complete(cached: CachedEmbeddings, i: int) -> bool:
    """A chunk file that loads with the expected shape (renames make partial files impossible; this also
    catches files damaged later)."""
    path = cached.chunk_path(i)
    if not os.path.exists(path):
        return False
    rows = min(cached.chunk_size, cached.n - i * cached.chunk_size)
    try:
        chunk = np.load(path, mmap_mode="r")
        ok = chunk.shape == (rows, cached.dim) and chunk.dtype == np.float32
    except (ValueError, OSError, EOFError):
        ok = False
    if not ok:
        log.warning("%s: unreadable or wrong shape; re-encoding it", path)
    return ok


def _write_npy(path: str, array: np.ndarray) -> None:
    with atomic.atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array, np.float32))
    _fsync_dir(os.path.dirname(path))


def _write_json(path: str, value) -> None:
    atomic.write_json(path, value)


_fsync_dir = atomic.fsync_dir
