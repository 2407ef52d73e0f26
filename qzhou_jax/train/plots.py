"""Training curves from a workdir's metrics.jsonl -> workdir/training_curves.png.

    python -m qzhou_jax.plots WORKDIR

Three panels: the loss (total, and per task type: loss/retrieval, loss/pair_score, loss/classification), the learning
rate, and the evaluation main scores (eval/<task>/main_score, and their mean) over steps. Steps where a value was
non-finite (stored as the string "nan"/"inf") are left as gaps. Drawn on a bare matplotlib Figure, which renders PNGs
with the Agg backend and touches no global pyplot state, so the trainer can call it from any thread; the file is
written to a temporary name and renamed, so a reader never sees half a PNG.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from typing import Sequence

from qzhou_jax.train.metrics import read_metrics

PLOT_NAME = "training_curves.png"


def _number(value) -> float | None:
    """A logged scalar as float (NaN for "nan"/"inf" strings), or None for anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else math.nan


def collect_series(rows: Sequence[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} over the rows of metrics.jsonl, in step order."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted(rows, key=lambda r: r.get("step", 0)):
        step = row.get("step")
        if step is None:
            continue
        for key, value in row.items():
            number = _number(value)
            if key != "step" and number is not None:
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(step))
                values.append(number)
    return series


def _is_task_loss(key: str) -> bool:
    return key.startswith("loss/") and key.count("/") == 1  # loss/<task type>; not loss/dataset/<name>


def plot_training(workdir: str, path: str | None = None) -> str:
    """Draws the curves of `workdir`/metrics.jsonl; returns the PNG's path (default workdir/training_curves.png)."""
    from matplotlib.figure import Figure

    rows = read_metrics(workdir)
    if not rows:
        raise FileNotFoundError(f"{os.path.join(workdir, 'metrics.jsonl')}: missing or empty, nothing to plot")
    series = collect_series(rows)
    path = path or os.path.join(workdir, PLOT_NAME)

    fig = Figure(figsize=(16, 4.5), layout="constrained")
    ax_loss, ax_lr, ax_eval = fig.subplots(1, 3)
    loss_keys = (["loss"] if "loss" in series else []) + sorted(k for k in series if _is_task_loss(k))
    for key in loss_keys:
        ax_loss.plot(*series[key], label="total" if key == "loss" else key[len("loss/"):],
                     linewidth=2.0 if key == "loss" else 1.2)
    _finish(ax_loss, "loss", "training loss", bool(loss_keys))

    if "learning_rate" in series:
        ax_lr.plot(*series["learning_rate"], color="tab:orange")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _finish(ax_lr, "learning rate", "learning rate", "learning_rate" in series, legend=False)

    eval_keys = sorted(k for k in series if k.startswith("eval/") and k.endswith("/main_score"))
    for key in eval_keys:
        ax_eval.plot(*series[key], marker="o", markersize=3, label=key[len("eval/"):-len("/main_score")])
    if len(eval_keys) > 1 and "eval/mean_main_score" in series:
        ax_eval.plot(*series["eval/mean_main_score"], color="black", linestyle="--", label="mean")
    _finish(ax_eval, "main score", "evaluation (main scores)", bool(eval_keys))

    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".training_curves.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _finish(ax, ylabel: str, title: str, has_data: bool, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not has_data:
        ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif legend:
        ax.legend(fontsize=8)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m qzhou_jax.plots WORKDIR")
    print(plot_training(sys.argv[1]))
