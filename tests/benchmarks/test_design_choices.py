"""benchmarks/design_choices.py: every row changes the recipe in the one respect it names (its config and
overrides loaded as the sweep would run them), and the table is read back from the runs' metrics."""
import json

import pytest

from benchmarks import design_choices as dc
from qzhou_jax.config import load_config

BOTH = ("stage1", "stage2")


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def loaded(name, tmp_path, seed=0):
    config, overrides = dc.row_overrides(name, tmp_path, "/bases/smollm2", seed)
    return flat(load_config(config, [o for o in overrides]).to_dict())


def both(key):
    return {f"stages.{s}.{key}" for s in BOTH}


EXPECTED = {
    "bidirectional_last": both("model.pooling"),
    "causal_mean": both("model.attention"),
    "causal_last": both("model.attention") | both("model.pooling"),
    "no_query_query": both("loss.query_query"),
    "no_mined": both("mine.enabled"),
    "tau_0.05": both("loss.tau"),
    "cosent_tau_0.02": {"stages.stage2.loss.cosent_tau"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_row_changes_the_recipe_in_one_respect(name, tmp_path):
    recipe, row = loaded("recipe", tmp_path), loaded(name, tmp_path)
    assert recipe.keys() == row.keys()
    assert {k for k in recipe if recipe[k] != row[k]} == EXPECTED[name]
    # every row trains the same base on the same shared mining cache
    assert row["stages.stage1.model.hf_dir"] == "/bases/smollm2"
    assert row["stages.stage2.mine.cache"] == str(tmp_path / "base_mining_cache")


def test_a_seed_changes_the_batch_order_only(tmp_path):
    for name, changed in (("recipe", both("data.seed")), ("stage2_alone", {"data.seed"})):
        row, seeded = loaded(name, tmp_path), loaded(name, tmp_path, seed=3)
        assert {k for k in row if row[k] != seeded[k]} == changed and {seeded[k] for k in changed} == {3}
    assert dc.row_workdir(tmp_path, "recipe", 3) == tmp_path / "recipe@seed3"
    assert dc.row_workdir(tmp_path, "recipe") == tmp_path / "recipe"


def test_stage2_alone_is_stage2_from_the_base_for_both_stages_steps(tmp_path):
    recipe, alone = loaded("recipe", tmp_path), loaded("stage2_alone", tmp_path)
    stage2 = {k.removeprefix("stages.stage2."): v for k, v in recipe.items() if k.startswith("stages.stage2.")}
    steps = recipe["stages.stage1.train.steps"] + recipe["stages.stage2.train.steps"]
    assert {k for k in stage2 if stage2[k] != alone[k]} == {"init_from", "train.steps", "checkpoint.every",
                                                            "eval.every"}
    assert alone["init_from"] == "base" and alone["train.steps"] == steps and alone["eval.every"] == steps
    assert alone["model.hf_dir"] == "/bases/smollm2"


def test_table_reads_the_last_evaluation_of_the_last_stage(tmp_path):
    def metrics(path, records):
        path.mkdir(parents=True)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    metrics(tmp_path / "a" / "stage1", [{"step": 10, "eval/STSBenchmark/main_score": 0.9}])
    metrics(tmp_path / "a" / "stage2", [{"step": 10, "eval/STSBenchmark/main_score": 0.1},
                                        {"step": 20, "loss": 1.0},
                                        {"step": 20, "eval/STSBenchmark/main_score": 0.5,
                                         "eval/SICK-R/main_score": 0.25, "eval/SICK-R/n_examples": 150}])
    scores = dc.final_scores(tmp_path / "a")
    assert scores == {"STSBenchmark": 0.5, "SICK-R": 0.25}
    text = dc.table([{"row": "recipe", "what": "the recipe", "config": "configs/smollm2.py:ablation",
                      "scores": scores, "overrides": ["--config.stages.stage1.loss.tau=0.05", "--config.model.hf_dir=/b"]}])
    assert ("| the recipe | 50.00 | 25.00 | 37.50 | 0 | `configs/smollm2.py:ablation` stages.stage1.loss.tau=0.05 |"
            in text), text
    # several seeds of a row: the mean, and the range in brackets
    runs = [{"row": "r", "seed": seed, "what": "r", "config": "c", "overrides": [f"--config.data.seed={seed}"],
             "scores": {"A": a, "B": b}} for seed, a, b in ((0, 0.2, 0.4), (1, 0.4, 0.4))]
    assert "| r | 30.00 (20.0-40.0) | 40.00 (40.0-40.0) | 35.00 (30.0-40.0) | 0,1 | `c` - |" in dc.table(runs), dc.table(runs)


def test_a_finished_row_is_not_run_again(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(dc.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    for name, marker in (("recipe", "recipe/stage2/done.json"), ("stage2_alone", "stage2_alone/done.json")):
        stages = ["stage1", "stage2"] if name == "recipe" else [""]
        for stage in stages:
            path = tmp_path / name / stage
            path.mkdir(parents=True, exist_ok=True)
            (path / "metrics.jsonl").write_text('{"step": 1, "eval/STSBenchmark/main_score": 0.5}\n')
        assert dc.run_row(name, tmp_path, None)["scores"] == {"STSBenchmark": 0.5} and len(ran) == 1  # not finished
        (tmp_path / marker).write_text("{}")
        dc.run_row(name, tmp_path, None)
        assert len(ran) == 1, name  # finished: not run again
        ran.clear()
