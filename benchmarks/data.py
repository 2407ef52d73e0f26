"""Data pipeline at scale: prepare throughput, start-up time and peak RSS of prepared vs in-memory datasets, and
host-side batch throughput at stage-1 shapes against what a v5p slice's train step consumes.

    python benchmarks/data.py [--sizes 10000,100000,1000000] [--throughput-samples 20000] [--batches 20]
                              [--threads 2] [--workdir DIR]

1. Scale (short synthetic FlagEmbedding rows: query + positive + 4 negatives, 4-20 words each): for each size N, a
   JSONL file is prepared into ArrayRecord shards (samples/s), then in a fresh process each path -- `prepared:`
   (lazy) and `jsonl:` (in memory) -- builds the stage-1 pipeline and yields its first batch; start-up seconds and
   the process's peak RSS are reported side by side (in-memory is skipped above --memory-max samples).
2. Throughput (stage-1 shapes: batch 256, 1 + 4 candidates, query / passage limits 256 / 1536 tokens, the built-in
   Qwen2.5 tokenizer, queries 8-40 words, passages 40-400 words): host batches/s and padded / real tokens/s of the
   prepared pipeline with --threads Grain threads, after one warm-up batch.
3. Need: the tokens/s a v5p-128 slice's stage-1 train step consumes (64 chips x 459 bf16 TFLOP/s x 50% MFU /
   (8 x 7.6e9 FLOPs per token: forward + backward + full remat)), per host (16 hosts), next to the measured rate.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ in ("__main__", "__mp_main__") and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import in_fresh_process  # noqa: E402

WORDS = np.array(("the model encodes every sentence into one vector while contrastive training pulls related texts "
                  "together and pushes unrelated ones apart across many tasks languages and domains query passage "
                  "answer question retrieval document embedding search relevant evidence claim").split())
# v5p: 459 TFLOP/s bf16 per chip (Cloud TPU spec); v5p-128 = 64 chips on 16 hosts; 7.6e9 params (Qwen2.5-7B).
V5P_PEAK, V5P_128_CHIPS, V5P_128_HOSTS, MFU, PARAMS = 459e12, 64, 16, 0.5, 7.6e9


def peak_rss_mb() -> float:
    """VmHWM: this process's peak RSS since exec. (getrusage's ru_maxrss survives exec, so a spawned child would
    report its large parent's resident set.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def prepare_timed(source: str, out: str) -> float:
    """Fresh process: prepare one dataset from scratch; seconds."""
    import shutil

    from qzhou_jax.data.prepare import prepare

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    prepare(data_config(source), out, log=lambda _: None)
    return time.perf_counter() - t0


def write_rows(path: Path, n: int, words: tuple[int, int], query_words: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 10_000
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)

            def texts(count, lo, hi):
                lengths = rng.integers(lo, hi + 1, size=count)
                return [f"{start + i} " + " ".join(WORDS[rng.integers(0, len(WORDS), size=k)])
                        for i, k in enumerate(lengths)]

            queries, pos = texts(m, *query_words), texts(m, *words)
            negs = np.array(texts(4 * m, *words), dtype=object).reshape(m, 4)
            f.write("".join(json.dumps({"query": q, "pos": [p], "neg": list(ns)}) + "\n"
                            for q, p, ns in zip(queries, pos, negs)))


def data_config(source: str, batch: int = 256) -> dict:
    return dict(datasets=[dict(name="synthetic", source=source, task="retrieval", num_negatives=4,
                               instruction="Given a web search query, retrieve relevant passages",
                               max_len_query=256, max_len_passage=1536)],
                batch_size=dict(retrieval=batch), buckets=(64, 128, 256, 512, 1024, 1536), seed=0)


def start_up(source: str) -> dict:
    """Fresh process: pipeline construction + first (text) batch; seconds and peak RSS."""
    from qzhou_jax.data.pipeline import build_pipeline

    base = peak_rss_mb()
    t0 = time.perf_counter()
    dataset, info = build_pipeline(data_config(source), None, process_index=0, process_count=1)
    next(iter(dataset))
    return {"start_up_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": base,
            "n": info.sizes[0]}


def throughput(source: str, batches: int, threads: int) -> dict:
    from qzhou_jax.data.pipeline import build_pipeline
    from qzhou_jax.tokenizer import load_tokenizer

    config = dict(data_config(source), num_threads=threads, prefetch_buffer_size=4)
    dataset, _ = build_pipeline(config, load_tokenizer(None), process_index=0, process_count=1)
    it = iter(dataset)
    next(it)  # warm-up: thread start, first tokenizer calls
    t0 = time.perf_counter()
    padded = real = 0
    for _ in range(batches):
        b = next(it)
        padded += b["anchor_ids"].size + b["cand_ids"].size
        real += int(b["anchor_mask"].sum() + (b["cand_mask"].sum(-1) * b["cand_valid"]).sum())
    s = time.perf_counter() - t0
    return {"batches_per_s": batches / s, "padded_tokens_per_s": padded / s, "real_tokens_per_s": real / s,
            "padded_tokens_per_batch": padded / batches, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--memory-max", type=int, default=1_000_000, help="largest N also run in memory")
    parser.add_argument("--throughput-samples", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qzhou_data_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"scale": [], "cores": len(os.sched_getaffinity(0))}
    for n in (int(x) for x in args.sizes.split(",")):
        rows = work / f"rows_{n}.jsonl"
        if not rows.exists():
            write_rows(rows, n, (4, 20), (4, 12))
        out = work / f"prepared_{n}"
        prep_s = in_fresh_process(prepare_timed, f"jsonl:{rows}", str(out))
        row = {"n": n, "prepare_s": prep_s, "prepare_samples_per_s": n / prep_s,
               "prepared": in_fresh_process(start_up, f"prepared:{out}/synthetic")}
        if n <= args.memory_max:
            row["in_memory"] = in_fresh_process(start_up, f"jsonl:{rows}")
        result["scale"].append(row)
        print(f"N={n:>8}: prepare {row['prepare_samples_per_s']:.0f} samples/s | prepared start-up "
              f"{row['prepared']['start_up_s']:.2f}s, peak RSS {row['prepared']['peak_rss_mb']:.0f} MB"
              + (f" | in memory {row['in_memory']['start_up_s']:.2f}s, {row['in_memory']['peak_rss_mb']:.0f} MB"
                 if "in_memory" in row else ""), flush=True)

    rows = work / f"stage1_rows_{args.throughput_samples}.jsonl"
    if not rows.exists():
        write_rows(rows, args.throughput_samples, (40, 400), (8, 40), seed=1)
    in_fresh_process(prepare_timed, f"jsonl:{rows}", str(work / "stage1"))
    host = in_fresh_process(throughput, f"prepared:{work}/stage1/synthetic", args.batches, args.threads)
    slice_tokens_per_s = V5P_128_CHIPS * V5P_PEAK * MFU / (8 * PARAMS)
    need = {"slice_tokens_per_s": slice_tokens_per_s, "per_host_tokens_per_s": slice_tokens_per_s / V5P_128_HOSTS,
            # global batches/s the slice steps through at these batches' padded size
            "slice_global_batches_per_s": slice_tokens_per_s / host["padded_tokens_per_batch"]}
    result.update(throughput=host, v5p_128_need=need)

    first, last = result["scale"][0], result["scale"][-1]
    print("\n| metric | value |\n|---|---|")
    for r in result["scale"]:
        mem = r.get("in_memory")
        print(f"| N = {r['n']:,}: prepare | {r['prepare_samples_per_s']:,.0f} samples/s ({r['prepare_s']:.1f} s) |")
        print(f"| N = {r['n']:,}: start-up prepared / in memory | {r['prepared']['start_up_s']:.2f} s / "
              + (f"{mem['start_up_s']:.2f} s |" if mem else "- |"))
        print(f"| N = {r['n']:,}: peak RSS prepared / in memory | {r['prepared']['peak_rss_mb']:.0f} MB / "
              + (f"{mem['peak_rss_mb']:.0f} MB |" if mem else "- |"))
    print(f"| prepared start-up ratio N={last['n']:,} / N={first['n']:,} | "
          f"{last['prepared']['start_up_s'] / first['prepared']['start_up_s']:.2f}x |")
    print(f"| prepared peak RSS ratio N={last['n']:,} / N={first['n']:,} | "
          f"{last['prepared']['peak_rss_mb'] / first['prepared']['peak_rss_mb']:.2f}x |")
    print(f"| host batches/s at stage-1 shapes (256 x (1+4), {args.threads} threads) | {host['batches_per_s']:.2f} |")
    print(f"| host padded / real tokens/s | {host['padded_tokens_per_s']:,.0f} / {host['real_tokens_per_s']:,.0f} |")
    print(f"| v5p-128 step consumes, padded tokens/s: slice / per host | {need['slice_tokens_per_s']:,.0f} / "
          f"{need['per_host_tokens_per_s']:,.0f} ({need['slice_global_batches_per_s']:.2f} global batches/s) |")
    print(f"| measured host rate / per-host need | {host['padded_tokens_per_s'] / need['per_host_tokens_per_s']:.1f}x |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
