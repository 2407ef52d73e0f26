"""Re-mining between stages on a tiny two-stage demo config: stage 2 trains on negatives mined with stage 1's
final model (scores recomputed here from stage 1's checkpoint), rows point at the mined file, reruns reuse it."""
import json
import os

import numpy as np
import pytest

from qzhou_jax.run import checkpoint
from qzhou_jax.train import loop as train
from qzhou_jax.encode import Encoder
from qzhou_jax.mining.stages import mining_model, remine_for_stage
from qzhou_jax.tokenizer import format_query, load_tokenizer
from tests.trained_workdir import each_stage

pytestmark = pytest.mark.slow
SAMPLES, WINDOW = 80, (5, 20)


def two_stage_config():
    overrides = each_stage("train.steps=2", "plot=False", "eval.tasks=()", "export.at_end=False",
                           "checkpoint.async_save=False", "train.log_every=1")
    overrides += ["--config.stages.stage2.mine.enabled=True", "--config.stages.stage2.mine.datasets=('scifact',)",
                  f"--config.stages.stage2.mine.window={WINDOW}", "--config.stages.stage2.mine.rule=max_score_ratio", "--config.stages.stage2.mine.rule_value=0.99"]
    cfg = train.load_config("configs/demo.py", overrides)
    for name in ("stage1", "stage2"):
        stage = cfg.stages[name]
        stage.data.datasets = [dict(d, max_examples=SAMPLES) for d in stage.data.datasets if d["name"] != "cmrc2018"
                               and d.get("task", "retrieval") == "retrieval" and d["source"] != "shared:stsb"][:2]
        stage.data.eta = None  # retrieval only: no retrieval share to fix
    return cfg


def test_stage_two_trains_on_negatives_mined_with_stage_one(tmp_path, capsys):
    cfg = two_stage_config()
    assert [d["name"] for d in cfg.stages.stage2.data.datasets] == ["scifact", "trecqa"]
    summary = train.run(cfg, str(tmp_path))
    assert summary["stages"]["stage2"]["step"] == 2
    mined = tmp_path / "stage2" / "mined" / "scifact.jsonl"
    rows = [json.loads(line) for line in mined.read_text().splitlines()]
    assert len(rows) == SAMPLES
    assert not (tmp_path / "stage2" / "mined" / "trecqa.jsonl").exists()

    # Stage 2 read the mined file for scifact and the original source for trecqa.
    _, _, meta = checkpoint.restore_params(str(tmp_path / "stage2"))
    sources = {d["name"]: d["source"] for d in meta["config"]["data"]["datasets"]}
    assert sources == {"scifact": f"jsonl:{mined}", "trecqa": "shared:trecqa"}

    # The recorded scores are stage 1's final model's cosine scores, with the query prompted as in training.
    params, config, _ = checkpoint.restore_params(str(tmp_path / "stage1"))
    encoder = Encoder(params, config, load_tokenizer(None), max_length=96)
    sample = [r for r in rows if r["neg"]][:10]
    assert len(sample) == 10  # the 0.99 ratio rule leaves some rows short, not most
    assert all(r["prompt"] == cfg.stages.stage2.data.datasets[0]["instruction"] != "" for r in rows)
    q = encoder.encode([format_query(r["query"], r["prompt"]) for r in sample])
    for r, qv in zip(sample, q):
        assert len(r["neg"]) == 1 and WINDOW[0] < r["neg_meta"][0]["rank"] <= WINDOW[1]
        (score,) = encoder.encode(r["neg"]) @ qv
        assert abs(score - r["neg_meta"][0]["score"]) < 1e-4
        assert score <= 0.99 * float(encoder.encode(r["pos"])[0] @ qv) + 1e-5
        assert r["neg"][0] not in r["pos"]

    # Rerunning the hook (a resumed stage) reuses the finished file.
    mtime = os.path.getmtime(mined)
    capsys.readouterr()
    stage2 = cfg.stages.stage2.copy_and_resolve_references()
    again = remine_for_stage(stage2, str(tmp_path / "stage1"), str(tmp_path / "stage2"))
    assert "mine: scifact: reusing" in capsys.readouterr().out
    assert os.path.getmtime(mined) == mtime
    assert again.data.datasets[0]["source"] == f"jsonl:{mined}" and again.data.datasets[0]["max_examples"] is None
    np.testing.assert_equal(len(again.data.datasets), 2)


def test_unknown_or_non_retrieval_dataset_is_an_error(tmp_path):
    stage2 = two_stage_config().stages.stage2.copy_and_resolve_references()
    stage2.mine.datasets = ("nope",)
    with pytest.raises(ValueError, match=r"mine.datasets: no dataset 'nope' in this stage"):
        remine_for_stage(stage2, str(tmp_path / "stage1"), str(tmp_path))


def test_mining_model_is_the_stage_start_unless_mine_model_says(tmp_path):
    stage2 = two_stage_config().stages.stage2.copy_and_resolve_references()
    stage2.model.hf_dir, stage2.init_from, previous = "/bases/b", "", str(tmp_path / "stage1")
    assert mining_model(stage2, previous) == previous
    assert mining_model(stage2, None) == "/bases/b"
    stage2.init_from = "/runs/other"
    assert mining_model(stage2, None) == "/runs/other"
    stage2.mine.model = "base"
    assert mining_model(stage2, previous) == "/bases/b"
    stage2.mine.model = "/runs/miner"
    assert mining_model(stage2, previous) == "/runs/miner"
    stage2.mine.model, stage2.model.hf_dir, stage2.init_from = "base", "", "base"
    with pytest.raises(ValueError, match="no model to mine with"):
        mining_model(stage2, previous)
