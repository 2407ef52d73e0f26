"""Full fine-tuning vs LoRA vs top-N layers (vs refreshed negatives, vs merges) on a pretrained base, side by side.

    python benchmarks/finetuning.py cost    --base bases/smollm2-135m-instruct [--variants full,lora:8,lora:32,top:15]
    python benchmarks/finetuning.py quality --base ... --out runs/ft [--variants full,lora:8,lora:32,top:15,full+refresh:10]
    python benchmarks/finetuning.py merge   --base ... --out runs/ft --parents full,lora:32

Variants (--variants, comma-separated): `full`, `lora:R` (rank R, alpha 2R unless --lora-alpha, lr --lora-lr),
`top:N` (the top N layers + final norm; embedding frozen), and any of them with `+refresh:K` (hard negatives
re-mined with the live params every K steps, mine.every=K). Each variant changes only that (`apply_variant`).

- `cost`: per variant in a fresh process: the real step (train/loop.build_state_and_steps) compiled ahead of time
  on one fixed retrieval batch (SciFact + TrecQA train; --batch queries x (positive + --negatives), --query-len /
  --passage-len tokens), XLA's memory analysis of it (temporaries, arguments), the optimizer state's bytes,
  trainable parameters, the median of --repeats timed steps after one warm-up, and the process's peak RSS.
- `quality`: per variant in a fresh process: `train.run` of the --config stage (default configs/smollm2.py's
  short "stage 2 alone": every task type, 30 steps, hard negatives mined by the base, one embedding cache shared
  by all variants) into OUT/<variant>, then the stage's evaluation tasks (dev splits, eval/tasks.py) on the final
  params (LoRA merged); the base is evaluated too. Loss, wall time, refresh cost (mine/* metrics) beside the scores.
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
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.common import in_fresh_process, load_note, machine_load, peak_rss_mb  # noqa: E402



def _one_cpu_device() -> None:
    """Every phase runs on one device, whatever the parent's XLA_FLAGS say (the test suite fakes 8, which the
    variants' mesh (1, 1, 1) would not match). Called first in each child process, before JAX loads."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = flags.strip()


# ----------------------------------------------------------------------------------------------- configs
def parse_variant(variant: str) -> dict:
    """'lora:8+refresh:10+lr:1e-3' -> {"kind": "lora", "arg": 8, "refresh": 10, "lr": 1e-3}."""
    head, *suffixes = variant.split("+")
    kind, _, arg = head.partition(":")
    out = {"kind": kind, "arg": int(arg) if arg.isdigit() else None, "refresh": 0, "lr": 0.0}
    try:
        if kind not in ("full", "lora", "top") or (kind != "full") != arg.isdigit():
            raise ValueError
        for suffix in suffixes:
            key, _, value = suffix.partition(":")
            if key not in ("refresh", "lr"):
                raise ValueError
            out[key] = int(value) if key == "refresh" else float(value)
    except ValueError:
        raise ValueError(f"variant {variant!r}: expected full, lora:R or top:N, then optionally +refresh:K "
                         f"and +lr:X") from None
    return out


def apply_variant(c, args, variant: str) -> None:
    """What a variant changes in a stage config: LoRA (rank, alpha, dropout, its own lr), the trainable layers, the
    refresh cadence. Everything else (data, batch, steps, seed) stays the config's."""
    v = parse_variant(variant)
    if v["kind"] == "lora":
        c.model.lora.rank = v["arg"]
        c.model.lora.alpha = float(args.lora_alpha or 2 * v["arg"])
        c.model.lora.dropout = args.lora_dropout
        c.optim.lr = args.lora_lr
    elif args.lr:
        c.optim.lr = args.lr
    if v["lr"]:
        c.optim.lr = v["lr"]
    if v["kind"] == "top":
        c.model.trainable = f"top:{v['arg']}"
    if v["refresh"]:
        c.mine.every = v["refresh"]


def make_config(args, variant: str, steps: int):
    """`cost`: one retrieval stage (SciFact + TrecQA train) at the command line's batch and lengths."""
    from qzhou_jax.config.defaults import base
    from qzhou_jax.data import presets

    c = base()
    c.model.hf_dir = args.base
    c.model.dtype = "float32"
    c.model.remat_policy = args.remat
    c.mesh.shape = (1, 1, 1)
    c.train.steps = steps
    c.train.log_every = 1
    c.train.seed = 0
    c.optim.warmup_steps = max(1, steps // 10)
    c.optim.lr = 1e-4
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
    apply_variant(c, args, variant)
    return c


def stage_config(args, variant: str):
    """`quality`: the --config stage (default: configs/smollm2.py's short stage-2 mix from the base, the design-choice
    sweep's "stage 2 alone" row) with the variant applied; its own evaluation off (the benchmark scores every model
    with one function, `_evaluate`, at the stage's evaluation settings)."""
    from qzhou_jax.config.loader import load_config

    c = load_config(os.path.join(REPO_ROOT, args.config))
    c.model.hf_dir = args.base
    c.mesh.shape = (1, 1, 1)
    if args.steps:
        c.train.steps = c.checkpoint.every = args.steps
    c.checkpoint.keep = 1
    c.eval.tasks = ()
    c.export.at_end = False
    c.plot = False
    if c.mine.enabled:  # mined by the base for every variant: one shared embedding cache encodes the corpus once
        c.mine.cache = os.path.join(os.path.abspath(args.out), "base_mining_cache")
    if args.max_train_examples:
        c.data.datasets = tuple(dict(d, max_examples=args.max_train_examples) for d in c.data.datasets)
    apply_variant(c, args, variant)
    return c


def eval_settings(args) -> dict:
    """Tasks, split, examples and length of the --config stage's own evaluation (configs/smollm2.py ablation: STS-B,
    SICK-R, TrecQA reranking, TREC classification; dev splits, 150 examples, 64 tokens); --tasks and
    --max-examples override."""
    from qzhou_jax.config.loader import load_config

    c = load_config(os.path.join(REPO_ROOT, args.config)).eval
    return {"tasks": args.tasks or list(c.tasks), "split": c.split or None,
            "max_examples": args.max_examples or c.max_examples, "max_length": c.max_length}


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

    e = eval_settings(args)
    encoder = load_encoder(model, max_length=e["max_length"], batch_size=32)
    rows = evaluate(encoder, e["tasks"], split=e["split"], max_examples=e["max_examples"], model_name=model)
    return {r["task"]: r["value"] for r in rows if r["metric"] == "main_score"}


def _train_and_evaluate(args, variant: str) -> dict:
    _one_cpu_device()
    from qzhou_jax.train import loop as train
    from qzhou_jax.train.metrics import read_metrics

    workdir = os.path.join(args.out, variant)
    t = time.time()
    summary = train.run(stage_config(args, variant), workdir)
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
    """The base and every variant; a variant already in OUT/quality.json for this --config and --steps is read
    back, not trained again (results are written after each variant, so an interrupted run resumes)."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "quality.json")
    key = {"config": args.config, "steps": args.steps, "max_train_examples": args.max_train_examples}
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            done = {r["variant"]: r for r in json.load(f).get("rows", []) if r.get("key") == key}
    rows = []

    def keep(row):
        rows.append(dict(row, key=key))
        print(f"{row['variant']}: {json.dumps(row)}", flush=True)
        earlier = [r for v, r in done.items() if v not in {x["variant"] for x in rows}]
        with open(path + ".tmp", "w") as f:
            json.dump({"phase": "quality", "rows": rows + earlier}, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    base = "base (untrained)"
    keep(done.get(base) or {"variant": base, "scores": in_fresh_process(_evaluate, args, args.base)})
    for variant in args.variants:
        keep(done.get(variant) or in_fresh_process(_train_and_evaluate, args, variant))
    _table(rows, f"after {rows[-1].get('steps')} steps")
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
    parser.add_argument("--variants", default="full,lora:8,lora:32,top:15",
                        type=lambda s: [v.strip() for v in s.split(",") if v.strip()])
    parser.add_argument("--config", default="configs/smollm2.py:ablation:stage2-alone",
                        help="quality: the stage every variant trains (path relative to the repository, :arg)")
    parser.add_argument("--steps", type=int, default=0, help="quality: training steps per variant (0: the config's)")
    parser.add_argument("--max-train-examples", type=int, default=0, help="rows per dataset (0: the config's / all)")
    parser.add_argument("--repeats", type=int, default=3, help="cost: timed steps per variant")
    parser.add_argument("--batch", type=int, default=8, help="cost: queries per batch")
    parser.add_argument("--negatives", type=int, default=1, help="cost: hard negatives per query")
    parser.add_argument("--query-len", type=int, default=32, help="cost")
    parser.add_argument("--passage-len", type=int, default=64, help="cost")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots", "dots_no_batch"), help="cost")
    parser.add_argument("--lr", type=float, default=0.0, help="full and top-N (0: the config's; cost: 1e-4)")
    parser.add_argument("--lora-lr", type=float, default=5e-4,
                        help="LoRA (5x the full lr: LoRA's best lr is commonly 5-10x full fine-tuning's)")
    parser.add_argument("--lora-alpha", type=float, default=0.0, help="0: 2 x rank")
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--tasks", default="", type=lambda s: [t for t in s.split(",") if t],
                        help="evaluation tasks (default: the --config stage's eval.tasks)")
    parser.add_argument("--max-examples", type=int, default=0, help="per evaluation task (0: the config's)")
    parser.add_argument("--parents", default="full,lora:32", type=lambda s: s.split(","))
    parser.add_argument("--methods", default="linear,slerp,ties", type=lambda s: s.split(","))
    parser.add_argument("--density", type=float, default=0.5, help="ties: fraction of each task vector kept")
    args = parser.parse_args(argv)
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as e:
            parser.error(f"--variants: {e}")  # one line and exit 2, no traceback
    load_before = os.getloadavg()[0]
    t = time.time()
    rows = {"cost": run_cost, "quality": run_quality, "merge": run_merge}[args.phase](args)
    load = machine_load(load_before, os.getloadavg()[0])
    print(load_note(load) + f"; {time.time() - t:.0f}s in all", flush=True)
    result = {"phase": args.phase, "rows": rows, "load": load, "args": {k: v for k, v in vars(args).items()}}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.phase}.json")
    if args.phase == "quality":  # every row run_quality kept: this run's first, then earlier runs' other variants
        with open(path) as f:
            result["rows"] = json.load(f)["rows"]
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
