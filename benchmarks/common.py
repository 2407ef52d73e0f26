"""What both benchmarks share: the checkpoint (random, or a real HF directory with --model-dir), fresh-process
isolation, RSS readings, the model flags, the PyTorch loader, synthetic text and the side-by-side JAX/PyTorch
table."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import random
import resource
import tempfile
from typing import Callable, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub (inherited by the spawned children)

QWEN25_VOCAB = 151665  # 151643 BPE tokens + 22 control tokens: every id the built-in tokenizer emits


# ------------------------------------------------------------------------------------------------------- CLI
def add_model_args(parser: argparse.ArgumentParser, model_dir: bool = False) -> None:
    """Size of the random Qwen2 checkpoint: --hidden --layers --heads --kv-heads --intermediate; with `model_dir`
    also --model-dir (a real HF Qwen2 directory instead, see benchmark_checkpoint)."""
    if model_dir:
        parser.add_argument("--model-dir", default=None,
                            help="an HF Qwen2 directory (e.g. one hf.convert wrote): both sides load its weights "
                                 "and tokenise with its tokenizer; the size flags are then ignored (default: a "
                                 "random checkpoint of that size, built-in Qwen2.5 tokenizer)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2048)


def add_runtime_args(parser: argparse.ArgumentParser, dtype_help: str | None = None) -> None:
    """--dtype (compute dtype of both sides) and --threads (torch threads, default: every visible core)."""
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help=dtype_help)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")


def model_info(model_dir: str, source: str) -> dict:
    """What a benchmark says about its model, read from the directory's config.json: `source` ("random" or the
    directory), the architecture numbers, whether the embeddings are tied, and the encoder's parameter count
    (embedding + layers + final norm: what Qwen2Model loads; an untied LM head is not part of the encoder)."""
    from qzhou_jax.model.config import ModelConfig

    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    config = ModelConfig.from_hf(hf)
    return {"source": source, "params": config.num_params(), "hidden": config.hidden_size,
            "layers": config.num_layers, "heads": config.num_heads, "kv_heads": config.num_kv_heads,
            "head_dim": config.head_size, "intermediate": config.intermediate_size, "vocab": config.vocab_size,
            "tied": bool(hf.get("tie_word_embeddings", False))}


def model_summary(info: dict, dtype: str) -> dict:
    """The "model" block of a benchmark's JSON line."""
    return {**info, "dtype": dtype}


def describe_model(info: dict) -> str:
    name = "random Qwen2" if info["source"] == "random" else os.path.basename(os.path.normpath(info["source"]))
    return (f"{name}: {info['params'] / 1e6:.1f}M params (hidden {info['hidden']}, {info['layers']} layers, "
            f"{info['heads']}/{info['kv_heads']} heads of {info['head_dim']}, ffn {info['intermediate']}, "
            f"vocab {info['vocab']}{' tied' if info['tied'] else ''})")


@contextlib.contextmanager
def benchmark_checkpoint(args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
    """(directory, model_info): --model-dir as it is, else a random checkpoint at the parsed size in a temporary
    directory (removed afterwards). Without tokenizer files there, qzhou_jax.tokenizer.load_tokenizer(directory)
    gives the built-in Qwen2.5 tokenizer, whose ids the random checkpoint's vocabulary covers."""
    if args.model_dir:
        if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
            raise FileNotFoundError(f"{args.model_dir}: no config.json (--model-dir takes an HF Qwen2 directory)")
        yield args.model_dir, model_info(args.model_dir, args.model_dir)
        return
    with tempfile.TemporaryDirectory(prefix="qzhou_bench_") as directory:
        make_checkpoint_for(args, directory)
        yield directory, model_info(directory, "random")


def load_torch_qwen2(model_dir: str, dtype, attention: str = "sdpa"):
    """transformers' Qwen2Model from an HF directory (a Qwen2Model or Qwen2ForCausalLM checkpoint), refusing a
    load that leaves weights missing (they would be silently random) or finds ones it does not know, except an
    LM head (not part of the encoder)."""
    import transformers

    model, info = transformers.Qwen2Model.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention,
                                                          output_loading_info=True)
    unexpected = {k for k in info["unexpected_keys"] if not k.startswith("lm_head.")}
    if info["missing_keys"] or unexpected or info["mismatched_keys"]:
        raise ValueError(f"{model_dir}: Qwen2Model did not load cleanly: missing {sorted(info['missing_keys'])}, "
                         f"unexpected {sorted(unexpected)}, mismatched {sorted(info['mismatched_keys'])}")
    return model


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
