"""Encoding throughput: the JAX `Encoder` against transformers' PyTorch `Qwen2Model`, same checkpoint, same texts.

    python benchmarks/encode.py [--hidden 768 --layers 12 --heads 12 --kv-heads 4 --intermediate 2048 --texts 256
                                 --batch-size 16 --max-length 128 --dtype float32 --source stsb --repeats 3]

One random Qwen2 checkpoint (real Qwen2.5 vocabulary, so the built-in tokenizer works) is written with
`save_pretrained` and loaded by both sides. Both tokenize the same texts with the same tokenizer, sort them by
length and pad each batch on the left to the same bucket length, so both run the same FLOPs; the PyTorch side runs
the stock model with transformers' bidirectional mask and mean pooling (as tests/oracle.py does) under
`torch.inference_mode`. Each side runs in its own fresh process (clean peak RSS, no thread pools left spinning by
the other library), does one warm-up pass (for JAX: compilation, one program per bucket length) and then
`--repeats` timed passes, of which the median is reported. Timed passes include tokenization on both sides.
Prints a side-by-side table, the cosine agreement of the two sides' embeddings, and one JSON line.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import gc
import gzip
import itertools
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ in ("__main__", "__mp_main__") and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/encode.py` puts benchmarks/, not the repo, on the path
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

QWEN25_VOCAB = 151665  # 151643 BPE tokens + 22 control tokens: every id the built-in tokenizer emits
DATA_DIR_ENV = "QZHOU_DATA_DIR"
SOURCES = ("stsb", "scifact", "synthetic")


# ----------------------------------------------------------------------------------------------------------- texts
def data_dir() -> Path:
    """$QZHOU_DATA_DIR, else <repository root>/../shared/data."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return REPO_ROOT / ".." / "shared" / "data"


def _stsb_sentences(path: Path) -> list[str]:
    """sentence1/sentence2 of the train split, in file order (the test split stays unseen)."""
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if line_no == 1 or not fields:
                continue
            if len(fields) < 8:
                raise ValueError(f"{path}:{line_no}: expected 8 tab-separated fields (split .. sentence1, "
                                 f"sentence2), got {len(fields)}")
            if fields[0] == "train":
                texts += [fields[6], fields[7]]
    return texts


def _scifact_documents(path: Path) -> list[str]:
    """'title text' of each corpus document (long: mostly truncated at --max-length)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{line_no}: field 'text' is missing or not a string")
            texts.append(f"{record.get('title') or ''} {record['text']}".strip())
    return texts


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic word salad of 4..60 words, so that batches fall into several buckets."""
    words = ("the model encodes every sentence into one vector while contrastive training pulls related texts "
             "together and pushes unrelated ones apart across many tasks languages and domains").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))).capitalize() + "." for _ in range(n)]


def load_texts(n: int, source: str = "stsb") -> tuple[list[str], str]:
    """`n` texts (repeated cyclically if the source holds fewer) and a description of where they came from.

    Falls back to synthetic text, saying so, when the shared data folder lacks the source.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    files = {"stsb": (data_dir() / "stsb_en_original" / "stsbenchmark.tsv.gz", _stsb_sentences),
             "scifact": (data_dir() / "scifact" / "corpus.jsonl", _scifact_documents)}
    if source != "synthetic":
        path, read = files[source]
        if path.is_file():
            texts = list(dict.fromkeys(t for t in read(path) if t.strip()))
            if texts:
                return list(itertools.islice(itertools.cycle(texts), n)), f"{source} ({path.name})"
        print(f"note: {path} not found (set {DATA_DIR_ENV}); using synthetic text", file=sys.stderr)
    return synthetic_texts(n), "synthetic"


# -------------------------------------------------------------------------------------------- child processes
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mb() -> float:
    """Current resident set (Linux), after a collection so that freed load-time buffers do not count."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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
    with torch.no_grad():  # non-trivial biases and norm scales, so the cosine check covers them too
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def _timed_passes(encode: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float, list[float]]:
    """One warm-up pass, then `repeats` timed ones: (embeddings, warm-up seconds, pass seconds)."""
    start = time.perf_counter()
    embeddings = encode()
    warmup = time.perf_counter() - start
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        embeddings = encode()
        passes.append(time.perf_counter() - start)
    return embeddings, warmup, passes


def run_jax(model_dir: str, texts: list[str], batch_size: int, max_length: int, buckets: tuple[int, ...],
            dtype: str, repeats: int) -> dict:
    import jax

    from qzhou_jax.encode import Encoder

    start = time.perf_counter()
    encoder = Encoder.from_pretrained(model_dir, dtype=dtype, max_length=max_length, batch_size=batch_size,
                                      buckets=buckets)
    jax.block_until_ready(encoder.params)
    load, rss_loaded = time.perf_counter() - start, _rss_mb()
    embeddings, warmup, passes = _timed_passes(lambda: encoder.encode(texts), repeats)
    lengths = [len(x) for x in encoder.token_ids(texts)]
    return dict(embeddings=embeddings, load_s=load, warmup_s=warmup, pass_s=passes, lengths=lengths,
                rss_loaded_mb=rss_loaded, peak_rss_mb=_peak_rss_mb(), device=str(jax.devices()[0].platform))


def run_torch(model_dir: str, texts: list[str], batch_size: int, max_length: int, buckets: tuple[int, ...],
              dtype: str, repeats: int, threads: int, attention: str = "sdpa") -> dict:
    import torch
    import transformers
    from transformers.masking_utils import create_bidirectional_mask

    from qzhou_jax.tokenizer import bucket_length, load_tokenizer

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = transformers.Qwen2Model.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                    attn_implementation=attention).eval()
    for layer in model.layers:
        layer.self_attn.is_causal = False  # with the bidirectional mask below: QZhou's serving setup
    tokenizer = load_tokenizer(model_dir)  # what Encoder.from_pretrained loads: left padding, no special tokens
    load, rss_loaded = time.perf_counter() - start, _rss_mb()
    pad_id, left = tokenizer.pad_token_id, tokenizer.padding_side == "left"

    @torch.inference_mode()
    def encode() -> np.ndarray:
        # Mirrors Encoder.encode: sort by length, pad each batch to its bucket, restore input order.
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length,
                        return_attention_mask=False)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        result = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]  # only real rows: eager PyTorch needs no fixed batch shape
            length = bucket_length(max(max(len(ids[r]) for r in rows), 1), buckets)
            input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for j, r in enumerate(rows):
                span = slice(length - len(ids[r]), length) if left else slice(0, len(ids[r]))
                input_ids[j, span] = torch.tensor(ids[r])
                mask[j, span] = 1
            embeds = model.embed_tokens(input_ids)
            full = create_bidirectional_mask(model.config, embeds, mask)
            hidden = model(inputs_embeds=embeds, attention_mask={"full_attention": full}).last_hidden_state
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            result[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return result

    embeddings, warmup, passes = _timed_passes(encode, repeats)
    return dict(embeddings=embeddings, load_s=load, warmup_s=warmup, pass_s=passes, threads=threads,
                rss_loaded_mb=rss_loaded, peak_rss_mb=_peak_rss_mb(), attention=attention)


def _in_fresh_process(fn: Callable, *args):
    """Runs fn(*args) in a new spawned interpreter and returns its result."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ------------------------------------------------------------------------------------------------------ report
def summarise(side: dict, n_texts: int, real_tokens: int, n_batches: int) -> dict:
    seconds = statistics.median(side["pass_s"])
    return {"texts_per_s": n_texts / seconds, "tokens_per_s": real_tokens / seconds,
            "ms_per_batch": 1000 * seconds / n_batches, "pass_s": seconds, "warmup_s": side["warmup_s"],
            "load_s": side["load_s"], "rss_loaded_mb": side["rss_loaded_mb"], "peak_rss_mb": side["peak_rss_mb"],
            "passes_s": side["pass_s"]}


def format_table(jax_row: dict, torch_row: dict) -> str:
    rows = [("texts/s", "texts_per_s", "{:.1f}"), ("tokens/s (real)", "tokens_per_s", "{:.0f}"),
            ("ms/batch", "ms_per_batch", "{:.1f}"), ("timed pass s (median)", "pass_s", "{:.3f}"),
            ("warm-up pass s", "warmup_s", "{:.2f}"), ("checkpoint load s", "load_s", "{:.2f}"),
            ("RSS after load MB", "rss_loaded_mb", "{:.0f}"), ("peak RSS MB (process)", "peak_rss_mb", "{:.0f}")]
    lines = [f"{'':24s}{'JAX':>12s}{'PyTorch':>12s}{'JAX/PyTorch':>14s}"]
    for label, key, fmt in rows:
        a, b = jax_row[key], torch_row[key]
        lines.append(f"{label:24s}{fmt.format(a):>12s}{fmt.format(b):>12s}{a / b:>14.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--source", choices=SOURCES, default="stsb", help="stsb sentences or scifact documents")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side (median reported)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--torch-attention", choices=("sdpa", "eager"), default="sdpa")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.texts < 1 or args.batch_size < 1:
        parser.error("--repeats, --texts and --batch-size must be >= 1")

    from qzhou_jax.encode import default_buckets
    from qzhou_jax.tokenizer import bucket_length

    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    texts, source = load_texts(args.texts, args.source)
    buckets = default_buckets(args.max_length)
    with tempfile.TemporaryDirectory(prefix="qzhou_bench_") as model_dir:
        n_params = _in_fresh_process(make_checkpoint, model_dir, args.hidden, args.layers, args.heads,
                                     args.kv_heads, args.intermediate)
        common = (model_dir, texts, args.batch_size, args.max_length, buckets, args.dtype, args.repeats)
        torch_side = _in_fresh_process(run_torch, *common, args.threads, args.torch_attention)
        jax_side = _in_fresh_process(run_jax, *common)

    lengths = jax_side["lengths"]
    real_tokens = sum(lengths)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    chunks = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    padded_tokens = sum(len(c) * bucket_length(max(max(lengths[i] for i in c), 1), buckets) for c in chunks)
    cosine = np.sum(jax_side["embeddings"] * torch_side["embeddings"], axis=-1)
    n_batches = len(chunks)
    jax_row = summarise(jax_side, len(texts), real_tokens, n_batches)
    torch_row = summarise(torch_side, len(texts), real_tokens, n_batches)

    print(f"random Qwen2: {n_params / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} layers, "
          f"{args.heads}/{args.kv_heads} heads, ffn {args.intermediate}, vocab {QWEN25_VOCAB}), {args.dtype}")
    print(f"{len(texts)} texts from {source}: {real_tokens} real tokens (mean {real_tokens / len(texts):.1f}, "
          f"{padded_tokens} after bucket padding), "
          f"batch {args.batch_size} x {n_batches}, max length {args.max_length}, buckets {list(buckets)}")
    print(f"JAX on {jax_side['device']}; PyTorch {torch_side['attention']} attention, {torch_side['threads']} "
          f"threads; {len(os.sched_getaffinity(0))} CPU cores visible; median of {args.repeats} timed passes; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(format_table(jax_row, torch_row))
    print(f"compile (JAX warm-up - timed pass): {jax_row['warmup_s'] - jax_row['pass_s']:.2f} s")
    print(f"embedding agreement JAX vs PyTorch: cosine min {cosine.min():.6f}, mean {cosine.mean():.6f}")

    summary = {
        "model": {"params": n_params, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "kv_heads": args.kv_heads, "intermediate": args.intermediate, "vocab": QWEN25_VOCAB,
                  "dtype": args.dtype},
        "data": {"source": source, "texts": len(texts), "real_tokens": real_tokens, "padded_tokens": padded_tokens,
                 "batch_size": args.batch_size, "max_length": args.max_length},
        "cores": len(os.sched_getaffinity(0)), "repeats": args.repeats,
        "load_average": [load_before, os.getloadavg()[0]],
        "jax": {**jax_row, "compile_s": jax_row["warmup_s"] - jax_row["pass_s"], "device": jax_side["device"]},
        "torch": {**torch_row, "threads": torch_side["threads"], "attention": torch_side["attention"]},
        "ratio_jax_over_torch": {k: jax_row[k] / torch_row[k] for k in ("texts_per_s", "ms_per_batch")},
        "cosine": {"min": float(cosine.min()), "mean": float(cosine.mean())},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
