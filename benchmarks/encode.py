"""Encoding throughput: the JAX `Encoder` against transformers' PyTorch `Qwen2Model`, same checkpoint, same texts.

    python benchmarks/encode.py [--model-dir DIR | --hidden 768 --layers 12 --heads 12 --kv-heads 4
                                 --intermediate 2048] [--texts 256 --batch-size 16 --max-length 128
                                 --dtype float32 --source stsb --repeats 3]

`--model-dir DIR`: a real HF Qwen2 directory (e.g. SmolLM2 imported by `qzhou_jax.hf.convert`), loaded by both
sides, texts tokenised with its own tokenizer. Without it, one random Qwen2 checkpoint (real Qwen2.5 vocabulary, so
the built-in tokenizer works) is written with `save_pretrained` and loaded by both sides. Both tokenize the same texts with the same tokenizer, sort them by
length and pad each batch on the left to the same bucket length, so both run the same FLOPs; the PyTorch side runs
the stock model with transformers' bidirectional mask and mean pooling (as tests/oracle.py does) under
`torch.inference_mode`. Each side runs in its own fresh process (clean peak RSS, no thread pools left spinning by
the other library), does one warm-up pass (for JAX: compilation, one program per bucket length) and then
`--repeats` timed passes, of which the median is reported. Timed passes include tokenization on both sides.
Prints a side-by-side table, the cosine agreement of the two sides' embeddings, and one JSON line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ in ("__main__", "__mp_main__") and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/encode.py` puts benchmarks/, not the repo, on the path

from benchmarks.common import (add_model_args, add_runtime_args, benchmark_checkpoint,  # noqa: E402
                               describe_model, in_fresh_process, load_note, load_torch_qwen2, machine_load,
                               model_summary, peak_rss_mb, ratios, rss_mb, side_by_side_table, synthetic_texts)

SOURCES = ("stsb", "scifact", "synthetic")
TABLE = [("texts/s", "texts_per_s", "{:.1f}"), ("tokens/s (real)", "tokens_per_s", "{:.0f}"),
         ("ms/batch", "ms_per_batch", "{:.1f}"), ("timed pass s (median)", "pass_s", "{:.3f}"),
         ("warm-up pass s", "warmup_s", "{:.2f}"), ("checkpoint load s", "load_s", "{:.2f}"),
         ("RSS after load MB", "rss_loaded_mb", "{:.0f}"), ("peak RSS MB (process)", "peak_rss_mb", "{:.0f}")]


# ----------------------------------------------------------------------------------------------------------- texts
def _source_texts(source: str) -> tuple[list[str], str]:
    """stsb: sentence1/sentence2 of the train split, in file order (the test split stays unseen); scifact: the
    corpus documents as "title text" (long: mostly truncated at --max-length)."""
    from qzhou_jax.data.shared_data import read_beir, read_sts

    if source == "stsb":
        return [t for pair in read_sts("stsb", "train") for t in (pair.text_a, pair.text_b)], \
            "stsb train (sentence1, sentence2)"
    corpus, _, _ = read_beir("scifact", "train")  # the corpus is the same for every split
    return list(corpus.values()), "scifact corpus (title text)"


def load_texts(n: int, source: str = "stsb") -> tuple[list[str], str]:
    """`n` texts (repeated cyclically if the source holds fewer) and a description of where they came from.

    Falls back to synthetic text, saying so, when the shared data folder lacks the source.
    """
    from qzhou_jax.data.shared_data import DATA_DIR_ENV

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source != "synthetic":
        try:
            texts, description = _source_texts(source)
        except FileNotFoundError as e:
            print(f"note: {e}; using synthetic text (set {DATA_DIR_ENV})", file=sys.stderr)
        else:
            texts = list(dict.fromkeys(t for t in texts if t.strip()))
            if texts:
                return list(itertools.islice(itertools.cycle(texts), n)), description
            print(f"note: {source} holds no text; using synthetic text", file=sys.stderr)
    return synthetic_texts(n), "synthetic"


# -------------------------------------------------------------------------------------------- child processes
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
    load, rss_loaded = time.perf_counter() - start, rss_mb()
    embeddings, warmup, passes = _timed_passes(lambda: encoder.encode(texts), repeats)
    lengths = [len(x) for x in encoder.token_ids(texts)]
    return dict(embeddings=embeddings, load_s=load, warmup_s=warmup, pass_s=passes, lengths=lengths,
                rss_loaded_mb=rss_loaded, peak_rss_mb=peak_rss_mb(), device=str(jax.devices()[0].platform))


def run_torch(model_dir: str, texts: list[str], batch_size: int, max_length: int, buckets: tuple[int, ...],
              dtype: str, repeats: int, threads: int, attention: str = "sdpa") -> dict:
    import torch
    import transformers
    from transformers.masking_utils import create_bidirectional_mask

    from qzhou_jax.tokenizer import bucket_length, load_tokenizer

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = load_torch_qwen2(model_dir, getattr(torch, dtype), attention).eval()
    for layer in model.layers:
        layer.self_attn.is_causal = False  # with the bidirectional mask below: QZhou's serving setup
    tokenizer = load_tokenizer(model_dir)  # what Encoder.from_pretrained loads: left padding, no special tokens
    load, rss_loaded = time.perf_counter() - start, rss_mb()
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
                rss_loaded_mb=rss_loaded, peak_rss_mb=peak_rss_mb(), attention=attention)


# ------------------------------------------------------------------------------------------------------ report
def summarise(side: dict, n_texts: int, real_tokens: int, n_batches: int) -> dict:
    seconds = statistics.median(side["pass_s"])
    return {"texts_per_s": n_texts / seconds, "tokens_per_s": real_tokens / seconds,
            "ms_per_batch": 1000 * seconds / n_batches, "pass_s": seconds, "warmup_s": side["warmup_s"],
            "load_s": side["load_s"], "rss_loaded_mb": side["rss_loaded_mb"], "peak_rss_mb": side["peak_rss_mb"],
            "passes_s": side["pass_s"]}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser, model_dir=True)
    add_runtime_args(parser)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--source", choices=SOURCES, default="stsb", help="stsb sentences or scifact documents")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side (median reported)")
    parser.add_argument("--torch-attention", choices=("sdpa", "eager"), default="sdpa")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.texts < 1 or args.batch_size < 1:
        parser.error("--repeats, --texts and --batch-size must be >= 1")

    from qzhou_jax.encode import default_buckets
    from qzhou_jax.tokenizer import bucket_length

    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    texts, source = load_texts(args.texts, args.source)
    buckets = default_buckets(args.max_length)
    with benchmark_checkpoint(args) as (model_dir, info):
        common = (model_dir, texts, args.batch_size, args.max_length, buckets, args.dtype, args.repeats)
        torch_side = in_fresh_process(run_torch, *common, args.threads, args.torch_attention)
        jax_side = in_fresh_process(run_jax, *common)

    lengths = jax_side["lengths"]
    real_tokens = sum(lengths)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    chunks = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    padded_tokens = sum(len(c) * bucket_length(max(max(lengths[i] for i in c), 1), buckets) for c in chunks)
    cosine = np.sum(jax_side["embeddings"] * torch_side["embeddings"], axis=-1)
    n_batches = len(chunks)
    jax_row = summarise(jax_side, len(texts), real_tokens, n_batches)
    torch_row = summarise(torch_side, len(texts), real_tokens, n_batches)

    print(f"{describe_model(info)}, {args.dtype}")
    print(f"{len(texts)} texts from {source}: {real_tokens} real tokens (mean {real_tokens / len(texts):.1f}, "
          f"{padded_tokens} after bucket padding), "
          f"batch {args.batch_size} x {n_batches}, max length {args.max_length}, buckets {list(buckets)}")
    load = machine_load(load_before, os.getloadavg()[0])
    print(f"JAX on {jax_side['device']}; PyTorch {torch_side['attention']} attention, {torch_side['threads']} "
          f"threads; {len(os.sched_getaffinity(0))} CPU cores visible; median of {args.repeats} timed passes; "
          f"{load_note(load)}")
    print(side_by_side_table(TABLE, jax_row, torch_row, oversubscribed=load["oversubscribed"]))
    print(f"compile (JAX warm-up - timed pass): {jax_row['warmup_s'] - jax_row['pass_s']:.2f} s")
    print(f"embedding agreement JAX vs PyTorch: cosine min {cosine.min():.6f}, mean {cosine.mean():.6f}")

    summary = {
        "model": model_summary(info, args.dtype),
        "data": {"source": source, "texts": len(texts), "real_tokens": real_tokens, "padded_tokens": padded_tokens,
                 "batch_size": args.batch_size, "max_length": args.max_length},
        "cores": len(os.sched_getaffinity(0)), "repeats": args.repeats,
        "load_average": load["load_average"], "oversubscribed": load["oversubscribed"],
        "jax": {**jax_row, "compile_s": jax_row["warmup_s"] - jax_row["pass_s"], "device": jax_side["device"]},
        "torch": {**torch_row, "threads": torch_side["threads"], "attention": torch_side["attention"]},
        "ratio_jax_over_torch": ratios(jax_row, torch_row, ("texts_per_s", "ms_per_batch"), load),
        "cosine": {"min": float(cosine.min()), "mean": float(cosine.mean())},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
