"""Atomic, durable file writes: a file is either the old one or the complete new one, never half written.

Everything a crash must not damage goes through here (run summaries, manifests, mined rows, embedding chunks,
synthesis outputs, evaluation results): write a temporary file beside the target, flush and fsync it, then
`os.replace` it over the target (atomic on POSIX filesystems); `fsync_dir` makes the rename itself durable where
a later step depends on it having happened (resume after power loss).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, durable_dir: bool = False) -> Iterator[Any]:
    """`with atomic_open(p) as f: f.write(...)`: `p` appears complete when the block succeeds, untouched when it
    raises. `mode` "w" (text, UTF-8) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable_dir:
        fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str, **kwargs) -> None:
    with atomic_open(path, "w", **kwargs) as f:
        f.write(text)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1, **kwargs) -> None:
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n", **kwargs)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes renames and creations inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
