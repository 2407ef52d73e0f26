"""Where metrics go: TensorBoard event files and `metrics.jsonl` in the workdir, and a progress line on stdout.

Only process 0 writes. `metrics.jsonl` is appended to, one JSON object per logged step, so a resumed run continues
the same file (rows past the resume step from a crashed run are dropped on open, keeping the file consistent). A
line cut short by kill -9 or a full disk is dropped with a warning, never a crash.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import jax


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):  # keep only rows the resumed state has really reached
            rows = [json.dumps(r) + "\n" for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.path + ".tmp", self.path)
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None and not isinstance(v, str)}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: v if math.isfinite(v) else str(v)
                                                       for k, v in clean.items()}}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `metrics.jsonl`; unparseable lines (a row cut short by a crash) are dropped and reported."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                why = "malformed" if line.endswith("\n") else "no newline: cut short by a crash or a full disk"
                message = f"{path}:{line_no}: dropped an unreadable metrics row ({len(line)} characters, {why})"
                logging.getLogger(__name__).warning(message)
                print(f"WARNING: {message}", flush=True)
    return rows


class Progress:
    """Steps, loss, throughput and ETA, printed every `every` steps."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total, self.start_step, self.t0 = total_steps, start_step, time.time()

    def line(self, step: int, scalars: dict[str, float]) -> str:
        elapsed = time.time() - self.t0
        done = max(step - self.start_step, 1)
        eta = elapsed / done * (self.total - step)
        parts = [f"step {step}/{self.total}", f"{scalars.get('task', '')}"]
        for key, fmt in (("loss", "loss {:.4f}"), ("examples_per_s", "{:.1f} ex/s"), ("tokens_per_s", "{:.0f} tok/s"),
                         ("mfu", "MFU {:.1%}"), ("learning_rate", "lr {:.2e}")):
            if scalars.get(key) is not None:
                parts.append(fmt.format(scalars[key]))
        parts.append(f"ETA {_duration(eta)}")
        return " | ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
