"""Training curves: a real PNG with the logged series drawn, gaps for non-finite values, atomic writes."""
import io
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from qzhou_jax.train.plots import PLOT_NAME, collect_series, plot_training


def write_metrics(workdir, rows):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def training_rows(steps=40, with_eval=True):
    rows = []
    for step in range(1, steps + 1):
        task = "retrieval" if step % 3 else "pair_score"
        loss = 3.0 * math.exp(-step / 15) + 0.1
        rows.append({"step": step, "loss": loss, f"loss/{task}": loss, "loss/dataset/scifact": loss,
                     "learning_rate": 1e-3 * min(step / 10, 1.0), "grad_norm": 1.0})
        if with_eval and step % 10 == 0:
            rows.append({"step": step, "eval/STSBenchmark/main_score": 0.2 + step / 100,
                         "eval/SciFact/main_score": 0.1 + step / 200, "eval/mean_main_score": 0.15 + step / 130,
                         "eval/STSBenchmark/cosine_pearson": 0.3})
    rows[5]["loss"] = "nan"  # how MetricsWriter stores a non-finite value
    return rows


def pixels(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.verify()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3).astype(int)


def count_near(rgb, colour, tol=40):
    return int(np.sum(np.abs(rgb - np.array(colour)).sum(axis=1) < tol))


def test_plot_is_a_png_with_the_curves_drawn(tmp_path):
    workdir = str(tmp_path / "run")
    write_metrics(workdir, training_rows())
    path = plot_training(workdir)
    assert path == os.path.join(workdir, PLOT_NAME)
    rgb = pixels(path)
    assert len(rgb) >= 1000 * 400
    assert count_near(rgb, (31, 119, 180)) > 300      # tab:blue: the total loss and the first eval curve
    assert count_near(rgb, (255, 127, 14)) > 300      # tab:orange: the learning rate and a second curve
    assert sorted(os.listdir(workdir)) == ["metrics.jsonl", PLOT_NAME]  # no temporary file left behind


def test_more_series_draw_more_ink(tmp_path):
    full, losses_only = str(tmp_path / "full"), str(tmp_path / "losses")
    write_metrics(full, training_rows())
    write_metrics(losses_only, training_rows(with_eval=False))
    ink = lambda p: int(np.sum(pixels(plot_training(p)).sum(axis=1) < 600))  # noqa: E731 - non-white pixels
    assert ink(full) > ink(losses_only) + 500


def test_series_keep_steps_and_turn_nonfinite_into_gaps():
    series = collect_series(training_rows(steps=12) + [{"step": 13, "note": "text", "flag": True}])
    steps, values = series["loss"]
    assert steps == list(range(1, 13)) and math.isnan(values[5]) and np.isfinite(values[6])
    assert series["eval/STSBenchmark/main_score"] == ([10], [pytest.approx(0.3)])
    assert series["loss/pair_score"][0] == [3, 6, 9, 12]
    assert "note" not in series and "flag" not in series


def test_missing_metrics_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_training(str(tmp_path))
