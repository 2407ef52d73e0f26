"""Full fine-tuning vs LoRA vs top-N layers (vs refreshed negatives, vs merges) on a pretrained base, side by side.

    nice -n 19 python benchmarks/finetuning.py cost    --base /work/bases/smollm2-135m-instruct
    nice -n 19 python benchmarks/finetuning.py quality --base ... --out /tmp/ft --steps 20 --max-examples 100
    nice -n 19 python benchmarks/finetuning.py merge   --base ... --out /tmp/ft --parents full,lora:32

Variants (--variants, comma-separated): `full`, `lora:R` (rank R, alpha 2R... see --lora-alpha), `top:N` (the top N
layers + final norm; embedding frozen), and any of them with `+refresh:K` (hard negatives re-mined with the live
params every K steps, mine.every=K). Every variant trains the same stage-1-like retrieval mix (SciFact + TrecQA
train, --negatives hard negatives, queries/passages cut to --query-len/--passage-len tokens, batch --batch) from
the base with the project's own trainer code.

- `cost`: per variant in a fresh process: the real step (train/loop.build_state_and_steps) compiled ahead of time on one
  fixed batch, XLA's memory analysis of it (temporaries, arguments), the optimizer state's bytes, trainable
  parameters, the median of --repeats timed steps after one warm-up, and the process's peak RSS.
- `quality`: per variant in a fresh process: `train.run` for --steps steps into OUT/<variant>, then the local
  evaluation tasks (--tasks, --max-examples, eval/tasks.py) on the final params (LoRA merged); the base is
  evaluated too. Loss, wall time, refresh cost (mine/* metrics) are reported beside the scores.
- `merge`: the --parents' final params merged (linear 0.5/0.5, slerp t=0.5, TIES against the base at density
  --density) and evaluated beside the parents' scores (OUT/<variant> from `quality`).

Prints one table per phase and one JSON line (also written to OUT/<phase>.json); withholds nothing, but says when
the 1-minute load average shows the cores oversubscribed (timings then indicative). docs/efficient_finetuning.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import in_fresh_process, load_note, machine_load, peak_rss_mb  # noqa: E402

DEFAULT_TASKS = "STSBenchmark,SICK-R,SciFact,TrecQAReranking,Banking77Classification"


def _one_cpu_device() -> None:
    """Every phase runs on one device, whatever the parent's XLA_FLAGS say (the test suite fakes 8, which the
    variants' mesh (1, 1, 1) would not match). Called first in each child process, before JAX loads."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = flags.strip()


# ----------------------------------------------------------------------------------------------- configs
def parse_variant(variant: str) -> dict:
    """'lora:8+refresh:10' -> {"kind": "lora", "arg": 8, "refresh": 10}."""
    head, _, refresh = variant.partition("+refresh:")
    kind, _, arg = head.partition(":")
    if kind not in ("full", "lora", "top") or (kind != "full" and not arg.isdigit()):
        raise ValueError(f"variant {variant!r}: expected full, lora:R or top:N, optionally +refresh:K")
    return {"kind": kind, "arg": int(arg) if arg else None, "refresh": int(refresh) if refresh else 0}


def make_config(args, variant: str, steps: int):
    from qzhou_jax.config.defaults import base
    from qzhou_jax.data import presets

    v = parse_variant(variant)
    c = base()
    c.model.hf_dir = args.base
    c.model.dtype = "float32"
    c.model.remat_policy = args.remat
    c.mesh.shape = (1, 1, 1)
    c.train.steps = steps
    c.train.log_every = 1
    c.train.seed = 0
    c.optim.warmup_steps = max(1, steps // 10)
    c.optim.lr = args.lora_lr if v["kind"] == "lora" else args.lr
    c.checkpoint.every = steps
    c.checkpoint.keep = 1
    c.checkpoint.async_save = False
    c.export.at_end = False
    c.plot = False
    c.data.datasets = presets.retrieval(max_len_query=args.query_len, max_len_passage=args.passage_len,
                                        num_negatives=args.negatives, max_examples=args.max_train_examples,
                                        chinese=False)
    c.data.batch_size = dict(retrieval=args.batch, pair_score=args.batch, classification=args.batch)
    c.data.buckets = tuple(b for b in (16, 32, 64, 128, 256) if b < args.passage_len) + (args.passage_len,)
    if v["kind"] == "lora":
        c.model.lora.rank = v["arg"]
        c.model.lora.alpha = float(args.lora_alpha or 2 * v["arg"])
        c.model.lora.dropout = args.lora_dropout
    elif v["kind"] == "top":
        c.model.trainable = f"top:{v['arg']}"
    if v["refresh"]:
        c.mine.every = v["refresh"]
        c.mine.window = (args.mine_start, args.mine_start + 20)
        c.mine.max_length = args.passage_len
        c.mine.batch_size = 32
    return c


# -------------------------------------------------------------------------------------------------- cost
def _cost(args, variant: str) -> dict:
    _one_cpu_device()
    import jax

    from qzhou_jax import model as qmodel, sharding
    from qzhou_jax.data import pipeline as data_pipeline
    from qzhou_jax.tokenizer import load_tokenizer
    from qzhou_jax.train import loop as train
    from qzhou_jax.train.step import create_state, mesh_context

    cfg = make_config(args, variant, steps=args.repeats + 1)
    model_config = train.build_model_config(cfg)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    tokenizer = load_tokenizer(args.base)
    dataset, info = data_pipeline.build_pipeline(cfg.data, tokenizer, process_index=0, process_count=1)
    built = train.build_state_and_steps(cfg, model_config, mesh, info.tasks)
    rules, tx, abstract = built.rules, built.tx, built.abstract_state
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    params = train.init_params(cfg, model_config, shardings.params)
    state = jax.jit(lambda p: create_state(p, tx, model_config), out_shardings=shardings)(params)
    batch = train.to_device_batch(next(iter(dataset)), rules)
    jax.block_until_ready((state, batch))
    rss_loaded = peak_rss_mb()
    t = time.perf_counter()
    with mesh_context(mesh):
        compiled = built.step.jitted_for(batch).lower(state, batch).compile()  # one step for every task
    compile_s = time.perf_counter() - t
    memory = compiled.memory_analysis()
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    trainable = qmodel.num_trainable(state.params, model_config)
    total = sum(x.size for x in jax.tree.leaves(state.params))
    return {"variant": variant, "step_s": statistics.median(times[1:]), "steps_s": [round(x, 3) for x in times],
            "compile_s": compile_s, "temp_mb": memory.temp_size_in_bytes / 2**20,
            "argument_mb": memory.argument_size_in_bytes / 2**20, "opt_state_mb": opt_bytes / 2**20,
            "trainable_params": trainable, "params": total, "peak_rss_mb": peak_rss_mb(),
            "rss_after_load_mb": rss_loaded, "loss": float(metrics["loss"]),
            "tokens": int(batch.anchor_mask.sum() + batch.cand_mask.sum())}


def run_cost(args) -> list[dict]:
    rows = []
    for variant in args.variants:
        row = in_fresh_process(_cost, args, variant)
        print(f"{variant}: {json.dumps(row)}", flush=True)
        rows.append(row)
    full = next((r for r in rows if r["variant"] == "full"), None)
    head = (f"| variant | trainable params | optimizer state MB | step s (median of {args.repeats}) | vs full | "
            f"XLA temp MB | peak RSS MB |")
    print("\n" + head + "\n|" + "---|" * 7)
    for r in rows:
        ratio = f"{r['step_s'] / full['step_s']:.2f}x" if full else "-"
        print(f"| {r['variant']} | {r['trainable_params'] / 1e6:.2f}M of {r['params'] / 1e6:.1f}M | "
              f"{r['opt_state_mb']:.1f} | {r['step_s']:.2f} | {ratio} | {r['temp_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    return rows


# ----------------------------------------------------------------------------------------------- quality
def _evaluate(args, model: str) -> dict:
    _one_cpu_device()
    from qzhou_jax.eval.evaluate import evaluate, load_encoder

    encoder = load_encoder(model, max_length=args.eval_max_length, batch_size=32)
    rows = evaluate(encoder, args.tasks, max_examples=args.max_examples, model_name=model)
    return {r["task"]: r["value"] for r in rows if r["metric"] == "main_score"}


def _train_and_evaluate(args, variant: str) -> dict:
    _one_cpu_device()
    from qzhou_jax.train import loop as train
    from qzhou_jax.train.metrics import read_metrics

    workdir = os.path.join(args.out, variant)
    t = time.time()
    summary = train.run(make_config(args, variant, args.steps), workdir)
    train_s = time.time() - t
    metrics = read_metrics(workdir)
    losses = [r["loss"] for r in metrics if "loss" in r]
    refresh = [r["mine/seconds"] for r in metrics if "mine/seconds" in r]
    t = time.time()
    scores = _evaluate(args, workdir)
    return {"variant": variant, "scores": scores, "train_s": train_s, "eval_s": time.time() - t,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "mean_last5_loss": statistics.mean(losses[-5:]) if losses else None, "refresh_s": refresh,
            "peak_rss_mb": peak_rss_mb(), "steps": summary.get("step")}


def _table(rows: list[dict], first_col: str) -> None:
    tasks = sorted({t for r in rows for t in r["scores"]})
    print("\n| " + first_col + " | " + " | ".join(tasks) + " | mean |")
    print("|" + "---|" * (len(tasks) + 2))
    for r in rows:
        values = [r["scores"].get(t) for t in tasks]
        mean = statistics.mean(v for v in values if v is not None)
        print(f"| {r['variant']} | " + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in values) +
              f" | {100 * mean:.2f} |")


def run_quality(args) -> list[dict]:
    os.makedirs(args.out, exist_ok=True)
    rows = [{"variant": "base (untrained)", "scores": in_fresh_process(_evaluate, args, args.base)}]
    print(f"base: {json.dumps(rows[0])}", flush=True)
    for variant in args.variants:
        row = in_fresh_process(_train_and_evaluate, args, variant)
        print(f"{variant}: {json.dumps(row)}", flush=True)
        rows.append(row)
    _table(rows, f"after {args.steps} steps")
    print("\n| variant | loss first -> mean of last 5 | train s | refresh s | peak RSS MB |\n|---|---|---|---|---|")
    for r in rows[1:]:
        print(f"| {r['variant']} | {r['first_loss']:.3f} -> {r['mean_last5_loss']:.3f} | {r['train_s']:.0f} | "
              f"{sum(r['refresh_s']):.0f} ({len(r['refresh_s'])}x) | {r['peak_rss_mb']:.0f} |")
    return rows


# ------------------------------------------------------------------------------------------------- merge
def _merge_and_evaluate(args, method: str) -> dict:
    _one_cpu_device()
    from qzhou_jax.merging import models as merge

    parents = [os.path.join(args.out, p) for p in args.parents]
    out = os.path.join(args.out, f"merge-{method}")
    weights = [0.5, 0.5] if len(parents) == 2 else None
    t = time.time()
    merged = merge.merge_models(method, parents, weights, base=args.base if method == "ties" else None,
                                density=args.density)
    merge.write_merged(*merged, out, overwrite=True)
    merge_s = time.time() - t
    return {"variant": f"{method}({'+'.join(args.parents)})", "scores": _evaluate(args, out), "merge_s": merge_s}


def run_merge(args) -> list[dict]:
    rows = []
    for parent in args.parents:
        rows.append({"variant": parent, "scores": in_fresh_process(_evaluate, args, os.path.join(args.out, parent))})
    for method in args.methods:
        row = in_fresh_process(_merge_and_evaluate, args, method)
        print(f"{row['variant']}: {json.dumps(row)}", flush=True)
        rows.append(row)
    _table(rows, "model")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("cost", "quality", "merge"))
    parser.add_argument("--base", required=True, help="HF Qwen2 directory (e.g. SmolLM2-135M converted)")
    parser.add_argument("--out", default="/tmp/qzhou-finetuning", help="workdirs and results (quality, merge)")
    parser.add_argument("--variants", default="full,lora:8,lora:32,top:8",
                        type=lambda s: [v.strip() for v in s.split(",") if v.strip()])
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant (quality)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (cost)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--query-len", type=int, default=32)
    parser.add_argument("--passage-len", type=int, default=64)
    parser.add_argument("--max-train-examples", type=int, default=2000)
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots", "dots_no_batch"))
    parser.add_argument("--lr", type=float, default=2e-5, help="full and top-N (the recipe's stage lr range)")
    parser.add_argument("--lora-lr", type=float, default=2e-4, help="LoRA (peers' LoRA recipes use 1e-4..2e-4)")
    parser.add_argument("--lora-alpha", type=float, default=0.0, help="0: 2 x rank")
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--mine-start", type=int, default=10, help="refresh: rank window start (window of 20)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, type=lambda s: [t for t in s.split(",") if t])
    parser.add_argument("--max-examples", type=int, default=100, help="per evaluation task")
    parser.add_argument("--eval-max-length", type=int, default=128)
    parser.add_argument("--parents", default="full,lora:32", type=lambda s: s.split(","))
    parser.add_argument("--methods", default="linear,slerp,ties", type=lambda s: s.split(","))
    parser.add_argument("--density", type=float, default=0.5, help="ties: fraction of each task vector kept")
    args = parser.parse_args(argv)
    for v in args.variants:
        parse_variant(v)
    load_before = os.getloadavg()[0]
    t = time.time()
    rows = {"cost": run_cost, "quality": run_quality, "merge": run_merge}[args.phase](args)
    load = machine_load(load_before, os.getloadavg()[0])
    print(load_note(load) + f"; {time.time() - t:.0f}s in all", flush=True)
    result = {"phase": args.phase, "rows": rows, "load": load, "args": {k: v for k, v in vars(args).items()}}
    if args.phase != "cost" or args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"{args.phase}.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
