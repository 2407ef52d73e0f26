"""Hard-negative mining: our `qzhou_jax.mine` against sentence-transformers' `mine_hard_negatives`, then our peak
RSS as the corpus grows.

    python benchmarks/mine.py [--hidden 256 --layers 4 --heads 4 --kv-heads 2 --intermediate 512 --queries 400
                               --max-length 128 --batch-size 32 --window 10:30 --scaling 10000,40000,160000]

Part 1, side by side: one random Qwen2 checkpoint, exported with `qzhou_jax.export` (bidirectional, mean pooling,
the query prompt), is loaded by both sides. Rows: SciFact train queries and their positives (shared data);
corpus: the SciFact corpus (5,183 abstracts) plus the positives. Both take the whole rank window as negatives
(ST: `sampling_strategy="top"`, `range_min`/`range_max`, `num_negatives` = window size; ours: `--negatives` =
window size, so the seeded draw takes every eligible candidate), so the overlap of the chosen negatives measures
agreement of the search itself rather than of two random draws. Each side runs in a fresh process (own peak RSS);
wall time includes model loading and encoding. ST ranks after removing the positives, we rank with them (the
window is over the raw ranking), so a few candidates at the window edge differ by design.

Part 2: our peak RSS and passages/s at `--scaling` synthetic passages (a tiny model, short texts), each in a fresh
process. The embeddings themselves are N x D x 4 bytes; the rest must stay flat.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim"


def write_inputs(directory: str, queries: int) -> tuple[str, str, int]:
    """SciFact train rows (query, pos) and the SciFact corpus as {"text"} lines."""
    from qzhou_jax.data import shared_data
    from qzhou_jax.data.sources import read_beir_folder

    samples = shared_data.read_shared("scifact", "train")
    rows = {}
    for s in samples:
        rows.setdefault(s.query, []).append(s.positive)
    rows = list(rows.items())[:queries]
    beir = read_beir_folder(os.path.join(str(shared_data.data_dir()), "scifact"), "test")
    rows_path, corpus_path = os.path.join(directory, "rows.jsonl"), os.path.join(directory, "corpus.jsonl")
    with open(rows_path, "w") as f:
        for query, pos in rows:
            f.write(json.dumps({"query": query, "pos": pos}) + "\n")
    with open(corpus_path, "w") as f:
        for text in beir.corpus.values():
            f.write(json.dumps({"text": text}) + "\n")
    return rows_path, corpus_path, len(rows)


def run_ours(export_dir, rows_path, corpus_path, out, window, negatives, max_length, batch_size) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from qzhou_jax.mining.corpus import normalize
    from qzhou_jax.mining.run import MineConfig, mine
    from qzhou_jax.mining.select import SelectConfig

    t = time.time()
    stats = mine(MineConfig(model=export_dir, input=rows_path, output=out, corpus=corpus_path,
                            select=SelectConfig(negatives=negatives, window=window), instruction=INSTRUCTION,
                            batch_size=batch_size, max_length=max_length, cache=out + ".cache", progress=False))
    wall = time.time() - t
    with open(out) as f:
        chosen = {normalize(r["query"]): [normalize(n) for n in r["neg"]] for r in map(json.loads, f)}
    return dict(wall_s=wall, passages=stats["passages"], peak_rss_mb=common.peak_rss_mb(), chosen=chosen)


def run_st(export_dir, rows_path, corpus_path, window, negatives, max_length, batch_size, threads) -> dict:
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from qzhou_jax.mining.corpus import normalize

    torch.set_num_threads(threads)
    t = time.time()
    model = SentenceTransformer(export_dir, trust_remote_code=True, device="cpu")
    model.max_seq_length = max_length
    rows = [json.loads(line) for line in open(rows_path)]
    anchors = [r["query"] for r in rows for _ in r["pos"]]
    positives = [p for r in rows for p in r["pos"]]
    corpus = [json.loads(line)["text"] for line in open(corpus_path)]
    dataset = datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})
    mined = mine_hard_negatives(dataset, model, corpus=corpus, range_min=window[0], range_max=window[1],
                                num_negatives=negatives, sampling_strategy="top", output_format="labeled-list",
                                query_prompt=f"Instruct: {INSTRUCTION}\nQuery: ", batch_size=batch_size,
                                verbose=False)
    wall = time.time() - t
    chosen = {}
    for row in mined:
        negs = [normalize(t) for t, label in zip(row["positive"], row["labels"]) if label == 0]
        chosen.setdefault(normalize(row["anchor"]), negs)
    n_passages = len({normalize(t) for t in corpus + positives})
    return dict(wall_s=wall, passages=n_passages, peak_rss_mb=common.peak_rss_mb(), chosen=chosen)


def run_scaling(model_dir, n, queries, max_length, batch_size, directory) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from qzhou_jax.mining.run import MineConfig, mine
    from qzhou_jax.mining.select import SelectConfig

    texts = common.synthetic_texts(n + queries, seed=n)
    rows_path, corpus_path = os.path.join(directory, f"rows{n}.jsonl"), os.path.join(directory, f"corpus{n}.jsonl")
    with open(rows_path, "w") as f:
        for i in range(queries):
            f.write(json.dumps({"query": texts[n + i][:80], "pos": [texts[i]]}) + "\n")
    with open(corpus_path, "w") as f:
        for text in texts[queries:n]:
            f.write(json.dumps({"text": text}) + "\n")
    base = common.rss_mb()
    t = time.time()
    out = os.path.join(directory, f"out{n}.jsonl")
    stats = mine(MineConfig(model=model_dir, input=rows_path, output=out, corpus=corpus_path,
                            select=SelectConfig(negatives=4, window=(10, 30)), instruction="Retrieve",
                            batch_size=batch_size, max_length=max_length, cache=out + ".cache", progress=False))
    wall = time.time() - t
    return dict(passages=stats["passages"], wall_s=wall, passages_per_s=stats["passages"] / wall,
                peak_rss_mb=common.peak_rss_mb(), rss_before_mb=base)


def export_model(hf_dir: str, export_dir: str) -> None:
    from qzhou_jax.cli import export
    export.main(["--params-from-hf", hf_dir, "--out", export_dir, "--dtype", "float32"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(parser)
    parser.set_defaults(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", default="10:30")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--scaling", default="10000,40000,160000", help="corpus sizes for part 2 ('' skips)")
    parser.add_argument("--scaling-hidden", type=int, default=64)
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args(argv)
    window = tuple(int(x) for x in args.window.split(":"))
    negatives = window[1] - window[0]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_compare:
            hf_dir, export_dir = os.path.join(tmp, "hf"), os.path.join(tmp, "export")
            n_params = common.make_checkpoint_for(args, hf_dir)
            common.in_fresh_process(export_model, hf_dir, export_dir)
            rows_path, corpus_path, n_rows = write_inputs(tmp, args.queries)
            print(f"{common.describe_model(common.model_info(hf_dir, 'random'))}; {n_rows} SciFact queries, "
                  f"window {args.window}, max length {args.max_length}", flush=True)
            ours = common.in_fresh_process(run_ours, export_dir, rows_path, corpus_path, os.path.join(tmp, "o.jsonl"),
                                           window, negatives, args.max_length, args.batch_size)
            st = common.in_fresh_process(run_st, export_dir, rows_path, corpus_path, window, negatives,
                                         args.max_length, args.batch_size, args.threads)
            shared = [q for q in ours["chosen"] if q in st["chosen"]]
            overlap = sum(len(set(ours["chosen"][q]) & set(st["chosen"][q])) / max(len(st["chosen"][q]), 1)
                          for q in shared) / max(len(shared), 1)
            for side in (ours, st):
                side["passages_per_s"] = side["passages"] / side["wall_s"]
            print(f"{'':24s}{'ours':>12s}{'ST':>12s}{'ours/ST':>10s}")
            for label, key, fmt in (("wall time (s)", "wall_s", "{:.1f}"), ("passages/s", "passages_per_s", "{:.1f}"),
                                    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}")):
                print(f"{label:24s}{fmt.format(ours[key]):>12s}{fmt.format(st[key]):>12s}"
                      f"{ours[key] / st[key]:>10.2f}")
            print(f"overlap of chosen negatives: {overlap:.3f} over {len(shared)} queries", flush=True)
            result["compare"] = dict(params=n_params, queries=n_rows, window=args.window, overlap=overlap,
                                     **{f"ours_{k}": ours[k] for k in ("wall_s", "passages_per_s", "peak_rss_mb")},
                                     **{f"st_{k}": st[k] for k in ("wall_s", "passages_per_s", "peak_rss_mb")},
                                     passages=ours["passages"])
        sizes = [int(x) for x in args.scaling.split(",") if x]
        if sizes:
            tiny = os.path.join(tmp, "tiny")
            common.in_fresh_process(common.make_checkpoint, tiny, args.scaling_hidden, 1, 2, 1,
                                    2 * args.scaling_hidden)
            print(f"\nscaling (tiny model hidden {args.scaling_hidden}, 1 layer, max length 32, 1000 queries):")
            print(f"{'passages':>10s}{'wall (s)':>10s}{'passages/s':>12s}{'peak RSS MB':>13s}{'embeddings MB':>15s}")
            result["scaling"] = []
            for n in sizes:
                r = common.in_fresh_process(run_scaling, tiny, n, 1000, 32, 256, tmp)
                r["embeddings_mb"] = r["passages"] * args.scaling_hidden * 4 / 2**20
                result["scaling"].append(r)
                print(f"{r['passages']:>10d}{r['wall_s']:>10.1f}{r['passages_per_s']:>12.0f}{r['peak_rss_mb']:>13.0f}"
                      f"{r['embeddings_mb']:>15.1f}", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
