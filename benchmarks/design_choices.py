"""The paper's design choices measured on a real pretrained base: one short SmolLM2 run per row, same budget and
seed, scored on the same dev slices (docs/learning.md has the table and what it says).

    python benchmarks/design_choices.py --out runs/design_choices [--rows recipe,causal_mean,...] \
        [--base bases/smollm2-135m-instruct] [--seeds 0,1]

Every row is `python -m qzhou_jax.train --config configs/smollm2.py:ablation[...] --workdir OUT/<row> <overrides>`
in its own process, run one after the other (a finished row, marked by its done.json, is not run again, so an
interrupted sweep resumes). With --seeds, every row runs once per data seed (the batch order; same data, same
mined negatives), and the table gives each score's mean and range over them: short runs are noisy, and a row's
difference means something only beyond that range. The table is read back from each run's metrics.jsonl: the
evaluation at the end of its last stage (configs/smollm2.py ABLATION_EVAL: dev splits where a task has one, fixed subsets). Writes OUT/table.md
(the rows with the overrides that produce them) and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BOTH = ("stage1", "stage2")


def _both(key: str, value) -> list[str]:
    return [f"--config.stages.{s}.{key}={value}" for s in BOTH]


# name -> (what changes, config argument, overrides). The recipe row is the reference every other row changes
# in one respect. "stage 2 alone" keeps the budget: stage 2's mix for the steps of both stages, from the base.
ROWS = {
    "recipe": ("the recipe: bidirectional, mean pooling, q-q negatives, mined negatives, stage 1 -> 2, tau 0.02",
               "ablation", []),
    "bidirectional_last": ("bidirectional attention, last-token pooling", "ablation", _both("model.pooling", "last")),
    "causal_mean": ("causal attention, mean pooling", "ablation", _both("model.attention", "causal")),
    "causal_last": ("causal attention, last-token pooling", "ablation",
                    _both("model.attention", "causal") + _both("model.pooling", "last")),
    "no_query_query": ("without query-query negatives", "ablation", _both("loss.query_query", False)),
    "no_mined": ("without mined hard negatives (stage 1 and 2 mine nothing)", "ablation",
                 _both("mine.enabled", False)),
    "stage2_alone": ("stage 2 alone from the base (same total steps)", "ablation:stage2-alone", []),
    "tau_0.05": ("InfoNCE tau 0.05 instead of the paper's 0.02", "ablation", _both("loss.tau", 0.05)),
    "cosent_tau_0.02": ("CoSENT at the paper's tau 0.02 too (ours: 0.5)", "ablation",
                        ["--config.stages.stage2.loss.cosent_tau=0.02"]),
}


def row_overrides(name: str, out: Path, base: str | None, seed: int = 0) -> tuple[str, list[str]]:
    """(config argument, every override) of one row's training run. `seed` > 0 sets data.seed (the batch order;
    the data and its mined negatives are the same): the spread between seeds is the noise a row's difference is
    read against."""
    _, arg, overrides = ROWS[name]
    alone = arg.endswith("alone")
    if seed:
        overrides = overrides + ([f"--config.data.seed={seed}"] if alone else _both("data.seed", seed))
    if base:
        overrides = overrides + ([f"--config.model.hf_dir={base}"] if alone else _both("model.hf_dir", base))
    # Every mining pass of the ablation uses the base model (configs/smollm2.py): one embedding cache, keyed by
    # model fingerprint and texts, serves every row and stage, so the corpus is encoded once for the whole sweep.
    cache = f"{out / 'base_mining_cache'}"
    overrides = overrides + ([f"--config.mine.cache={cache}"] if alone else _both("mine.cache", cache))
    return f"configs/smollm2.py:{arg}", overrides


def row_workdir(out: Path, name: str, seed: int = 0) -> Path:
    return out / (f"{name}@seed{seed}" if seed else name)


def run_row(name: str, out: Path, base: str | None, seed: int = 0) -> dict:
    what = ROWS[name][0]
    config, overrides = row_overrides(name, out, base, seed)
    workdir = row_workdir(out, name, seed)
    cmd = [sys.executable, "-m", "qzhou_jax.train", "--config", config, "--workdir", str(workdir), *overrides]
    # a staged run marks each finished stage with its own done.json; the last one marks the row
    done = workdir / ("done.json" if config.endswith("alone") else f"{BOTH[-1]}/done.json")
    start = time.time()
    if not done.exists():
        print(f"== {workdir.name}: {' '.join(cmd[3:])}", flush=True)
        with open(out / f"{workdir.name}.log", "a") as log:
            subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"row": name, "seed": seed, "what": what, "config": config, "overrides": overrides,
            "scores": final_scores(workdir), "seconds": round(time.time() - start, 1)}


def final_scores(workdir: Path) -> dict[str, float]:
    """The last evaluation of the run's last stage: {task: main score}."""
    stages = [workdir / s for s in BOTH if (workdir / s).is_dir()] or [workdir]
    scores = {}
    for line in open(stages[-1] / "metrics.jsonl"):
        record = json.loads(line)
        found = {k.split("/")[1]: v for k, v in record.items() if k.startswith("eval/") and k.endswith("/main_score")}
        if found:
            scores = found
    return scores


def _cell(values: list[float]) -> str:
    """One score over seeds, x100: the mean, and the range when there are several."""
    if not values:
        return "-"
    mean = 100 * sum(values) / len(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def table(results: list[dict]) -> str:
    """One line per row: each task's score averaged over the row's seeds (their range in brackets), the mean over
    tasks, the seeds and the overrides that produce the row."""
    tasks = list(dict.fromkeys(t for r in results for t in r["scores"]))
    head = "| row | " + " | ".join(tasks) + " | mean | seeds | overrides |"
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for name in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == name]
        cells = [_cell([r["scores"][t] for r in runs if t in r["scores"]]) for t in tasks]
        means = [sum(r["scores"].values()) / len(r["scores"]) for r in runs if r["scores"]]
        first = runs[0]
        overrides = " ".join(o.replace("--config.", "") for o in first["overrides"]
                             if not any(k in o for k in ("hf_dir", "mine.cache", "data.seed"))) or "-"
        seeds = ",".join(str(r.get("seed", 0)) for r in runs)
        lines.append(f"| {first['what']} | " + " | ".join(cells) + f" | {_cell(means)} | {seeds} | "
                     f"`{first['config']}` {overrides} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="one workdir per row, plus table.md and results.json")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--base", default=None, help="the converted SmolLM2 directory (default: the config's)")
    parser.add_argument("--seeds", default="0", help="comma list of data seeds, each row run once per seed "
                                                     "(0: the config's own; N > 0 in OUT/<row>@seedN)")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known: {list(ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds: a comma list of integers, got {args.seeds!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = os.path.abspath(args.base) if args.base else None
    path = out / "results.json"
    earlier = {(r["row"], r.get("seed", 0)): r for r in json.loads(path.read_text())} if path.exists() else {}

    def ordered():
        known = [k for k in earlier if k[0] in ROWS]  # rows since removed from ROWS are kept out of the table
        return [earlier[k] for k in sorted(known, key=lambda k: (list(ROWS).index(k[0]), k[1]))]

    for name in rows:
        for seed in seeds:  # each run's result is kept as soon as it is done
            earlier[name, seed] = run_row(name, out, base, seed)
            path.write_text(json.dumps(ordered(), indent=1) + "\n")
    results = ordered()
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
