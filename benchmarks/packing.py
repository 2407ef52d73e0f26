"""Sequence packing vs padded batches: padding fraction and train-step tokens/s on the shared data's real lengths.

    python benchmarks/packing.py [--query-len 256 --passage-len 512 --row-length 512 --batch 16 --negatives 4
                                  --batches 12 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128]

Batches come from the project's own pipeline (presets.retrieval: SciFact, TrecQA, cmrc2018 from the shared data,
built-in Qwen2.5 tokenizer) at the stage-1 query length (256) and a passage cap that a CPU can run (default 512;
the recipe's 1536 via --passage-len 1536 --row-length 1536), padded to the pipeline's length buckets. The same
batches are then packed with data/packing.py. Both paths run the same jitted forward+backward of the retrieval
loss (train_step.plain_loss_and_grads) of a tiny random model; each distinct shape is compiled first (compile
time reported on its own), then every batch is timed once per path, interleaved. Prints a side-by-side table and
one JSON line. The 1-min load average is printed; above the core count the figures are flagged as unreliable.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ in ("__main__", "__mp_main__") and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def host_batches(args) -> list[dict]:
    from qzhou_jax.data import presets
    from qzhou_jax.data.pipeline import build_pipeline
    from qzhou_jax.tokenizer import load_tokenizer

    data = dict(datasets=presets.retrieval(max_len_query=args.query_len, max_len_passage=args.passage_len,
                                           num_negatives=args.negatives),
                batch_size=dict(retrieval=args.batch), buckets=(64, 128, 256, 512, 1024, 1536), seed=args.seed,
                num_threads=1)
    stream, info = build_pipeline(data, load_tokenizer(), process_index=0, process_count=1)
    return [dict(b) for b in itertools.islice(stream, args.batches)], info.names


def run(args) -> dict:
    import jax
    import numpy as np

    from qzhou_jax import losses
    from qzhou_jax.batch import Batch
    from qzhou_jax.train import step as train_step
    from qzhou_jax.data import packing
    from qzhou_jax.model import ModelConfig, init_params

    padded, names = host_batches(args)
    t0 = time.perf_counter()
    packed = [packing.pack_batch(b, args.row_length) for b in padded]
    pack_ms = (time.perf_counter() - t0) / len(padded) * 1e3

    config = ModelConfig(vocab_size=151665, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                         max_position_embeddings=32768, attention_impl="auto")
    params = init_params(config, jax.random.key(0))
    # The device batch stays a dict here (its keys key the compile cache); the step sees it as the typed Batch.
    step = jax.jit(lambda p, b: train_step.plain_loss_and_grads(
        p, config, losses.LossConfig(), Batch.from_host(b, task="retrieval"))[:2])

    def keys(b):  # what reaches the device: the padded token arrays, or the packed ones
        wanted = packing.batch_keys(("anchor_ids", "anchor_mask", "cand_ids", "cand_mask", "cand_valid"),
                                    "packed_ids" in b)
        return {k: jax.device_put(b[k]) for k in wanted}

    results = {}
    for name, batches in (("padded", padded), ("packed", packed)):
        device = [keys(b) for b in batches]
        shapes = {tuple((k, v.shape) for k, v in sorted(b.items())) for b in device}
        t0 = time.perf_counter()
        compiled = {}
        for b in device:
            sig = tuple((k, v.shape) for k, v in sorted(b.items()))
            if sig not in compiled:
                compiled[sig] = step.lower(params, b).compile()
        compile_s = time.perf_counter() - t0
        results[name] = dict(device=device, compiled=compiled, shapes=len(shapes), compile_s=compile_s, times=[],
                             slots=sum(int(np.prod(b["packed_ids" if name == "packed" else "anchor_ids"].shape))
                                       + (0 if name == "packed" else int(np.prod(b["cand_ids"].shape)))
                                       for b in batches),
                             padding=statistics.mean(packing.padding_fraction(b) for b in batches))
    losses_seen = {"padded": [], "packed": []}
    for i in range(len(padded)):  # interleaved, so load changes hit both paths alike
        for name in ("padded", "packed"):
            r = results[name]
            b = r["device"][i]
            fn = r["compiled"][tuple((k, v.shape) for k, v in sorted(b.items()))]
            t0 = time.perf_counter()
            loss, _ = jax.block_until_ready(fn(params, b))
            r["times"].append(time.perf_counter() - t0)
            losses_seen[name].append(float(loss))
    real = sum(int(b["anchor_mask"].sum() + (b["cand_mask"].sum(-1) * b["cand_valid"]).sum()) for b in padded)
    out = {}
    for name, r in results.items():
        seconds = sum(r["times"])
        out[name] = dict(tokens_per_s=real / seconds, step_s=statistics.median(r["times"]),
                         token_slots=r["slots"], padding_fraction=r["padding"], distinct_shapes=r["shapes"],
                         compile_s=r["compile_s"])
    out["speedup"] = out["packed"]["tokens_per_s"] / out["padded"]["tokens_per_s"]
    out["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses_seen["padded"], losses_seen["packed"]))
    out["pack_ms_per_batch"] = pack_ms
    out["real_tokens"] = real
    out["datasets"] = names
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--query-len", type=int, default=256)
    parser.add_argument("--passage-len", type=int, default=512)
    parser.add_argument("--row-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=128)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    out = run(args)
    load_after = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    rows = [("real tokens/s (fwd+bwd)", "tokens_per_s", "{:.0f}"), ("step s (median)", "step_s", "{:.3f}"),
            ("token slots computed", "token_slots", "{:d}"), ("padding fraction", "padding_fraction", "{:.3f}"),
            ("distinct shapes", "distinct_shapes", "{:d}"), ("compile s (all shapes)", "compile_s", "{:.1f}")]
    print(f"retrieval batches of {args.batch} x (1 + {args.negatives}) from {', '.join(out['datasets'])}; query "
          f"<= {args.query_len}, passage <= {args.passage_len} tokens; packed rows of {args.row_length}; tiny model "
          f"(hidden {args.hidden}, {args.layers} layers); {args.batches} batches, {out['real_tokens']} real tokens")
    print(f"{'':28s}{'padded':>12s}{'packed':>12s}")
    for label, key, fmt in rows:
        print(f"{label:28s}{fmt.format(out['padded'][key]):>12s}{fmt.format(out['packed'][key]):>12s}")
    flag = "" if max(load_before, load_after) <= cores else "  (UNRELIABLE: cores oversubscribed)"
    print(f"packed / padded tokens/s: {out['speedup']:.2f}x{flag}; host packing "
          f"{out['pack_ms_per_batch']:.1f} ms/batch; max |loss packed - padded| {out['max_loss_diff']:.2e}; "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after on {cores} cores")
    out.update(load_average=[load_before, load_after], cores=cores, args=vars(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
