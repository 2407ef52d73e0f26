"""What both benchmarks share: the random checkpoint, fresh-process isolation, RSS readings, the model-size flags,
synthetic text and the side-by-side JAX/PyTorch table."""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import random
import resource
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub (inherited by the spawned children)

QWEN25_VOCAB = 151665  # 151643 BPE tokens + 22 control tokens: every id the built-in tokenizer emits


# ------------------------------------------------------------------------------------------------------- CLI
def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Size of the random Qwen2 checkpoint: --hidden --layers --heads --kv-heads --intermediate."""
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2048)


def add_runtime_args(parser: argparse.ArgumentParser, dtype_help: str | None = None) -> None:
    """--dtype (compute dtype of both sides) and --threads (torch threads, default: every visible core)."""
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=dtype_help)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")


def model_summary(args: argparse.Namespace, n_params: int) -> dict:
    """The "model" block of a benchmark's JSON line."""
    return {"params": n_params, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
            "kv_heads": args.kv_heads, "intermediate": args.intermediate, "vocab": QWEN25_VOCAB, "dtype": args.dtype}


def describe_model(args: argparse.Namespace, n_params: int) -> str:
    return (f"random Qwen2: {n_params / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers, "
            f"{args.heads}/{args.kv_heads} heads, ffn {args.intermediate}, vocab {QWEN25_VOCAB})")


# ---------------------------------------------------------------------------------------------- checkpoint
def make_checkpoint(directory: str, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                    seed: int = 0) -> int:
    """Writes a random transformers Qwen2Model (fp32) with save_pretrained; returns its parameter count."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=QWEN25_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    model = transformers.Qwen2Model(config).eval()
    with torch.no_grad():  # non-trivial biases and norm scales, so the agreement checks cover them too
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def make_checkpoint_for(args: argparse.Namespace, directory: str) -> int:
    """make_checkpoint at the size add_model_args parsed, in a fresh process (torch stays out of the parent)."""
    return in_fresh_process(make_checkpoint, directory, args.hidden, args.layers, args.heads, args.kv_heads,
                            args.intermediate)


# ------------------------------------------------------------------------------------------ child processes
def in_fresh_process(fn: Callable, *args):
    """Runs fn(*args) in a new spawned interpreter and returns its result."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb() -> float:
    """Current resident set (Linux), after a collection so that freed load-time buffers do not count."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------------------------------- texts
def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic word salad of 4..60 words, so that batches fall into several buckets."""
    words = ("the model encodes every sentence into one vector while contrastive training pulls related texts "
             "together and pushes unrelated ones apart across many tasks languages and domains").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))).capitalize() + "." for _ in range(n)]


# --------------------------------------------------------------------------------------------------- report
def machine_load(load_before: float, load_after: float, cores: int | None = None) -> dict:
    """Whether the cores were oversubscribed during a run, from the 1-minute load average before and after it.

    A benchmark that uses every core itself raises the load to about `cores`; above 1.25 x cores other work was
    competing for them, and the two libraries suffer unequally (PyTorch's spinning threads more), so ratios taken
    then are not comparisons of the code. Then tables print no ratio and JSON carries `oversubscribed: true`."""
    cores = cores or len(os.sched_getaffinity(0))
    worst = max(load_before, load_after)
    return {"load_average": [load_before, load_after], "cores": cores, "oversubscribed": worst > 1.25 * cores}


def load_note(load: dict) -> str:
    before, after = load["load_average"]
    note = f"1-min load average {before:.1f} before, {after:.1f} after on {load['cores']} cores"
    if load["oversubscribed"]:
        note += (" -- OVERSUBSCRIBED: other processes competed for the cores; JAX/PyTorch ratios are withheld "
                 "(rerun on a quiet machine, load under the core count)")
    return note


def ratios(jax_row: dict, torch_row: dict, keys: Sequence[str], load: dict) -> dict | None:
    """JAX / PyTorch per key, or None when the machine was oversubscribed (see machine_load)."""
    if load["oversubscribed"]:
        return None
    return {k: jax_row[k] / torch_row[k] for k in keys}


def side_by_side_table(rows: Sequence[tuple[str, str, str]], jax_row: dict, torch_row: dict,
                       scale: dict[str, float] | None = None, oversubscribed: bool = False) -> str:
    """One line per (label, key, format): JAX, PyTorch, JAX/PyTorch; `scale[key]` multiplies the shown values
    (not the ratio), e.g. 1e-9 to show FLOP/s as GFLOP/s. `oversubscribed`: the ratio column says "loaded"."""
    scale = scale or {}
    lines = [f"{'':24s}{'JAX':>12s}{'PyTorch':>12s}{'JAX/PyTorch':>14s}"]
    for label, key, fmt in rows:
        a, b, s = jax_row[key], torch_row[key], scale.get(key, 1.0)
        ratio = f"{'loaded':>14s}" if oversubscribed else f"{a / b:>14.2f}"
        lines.append(f"{label:24s}{fmt.format(a * s):>12s}{fmt.format(b * s):>12s}{ratio}")
    return "\n".join(lines)


def top_ops(call: Callable[[], object], hlo_text: str, n: int = 12) -> list[dict]:
    """One traced `call()` of a compiled JAX function whose optimised HLO is `hlo_text` (`compiled.as_text()`):
    the XLA ops (fusions) that took the most thread time, each with
    its call count, result shape and the model code it came from (the HLO op_name). This is how the CPU step's
    strided transposes were found (docs/planning.md); on CPU the events are per-thread, so totals add up to
    cores x wall time. Uses jax.profiler and its ProfileData reader (no TensorBoard needed)."""
    import collections
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    origin = {m[1]: (m[2], m[3])
              for m in re.finditer(r"%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo_text)}
    with tempfile.TemporaryDirectory(prefix="qzhou_trace_") as trace_dir:
        jax.block_until_ready(call())  # warm
        jax.profiler.start_trace(trace_dir)
        jax.block_until_ready(call())
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(path)
    seconds, calls = collections.Counter(), collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in origin:  # XLA ops only (not the runtime's own spans)
                    seconds[event.name] += event.duration_ns / 1e9
                    calls[event.name] += 1
    return [{"op": op, "thread_s": round(t, 6), "calls": calls[op], "shape": origin[op][0],
             "source": origin[op][1].split("/", 1)[-1][-90:]} for op, t in seconds.most_common(n)]
