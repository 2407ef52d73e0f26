"""A merge stage in a staged config: it merges the stages it follows into a params-only checkpoint and an export
that read like a trained stage, and a rerun does not merge again."""
import numpy as np
import pytest

from qzhou_jax.run import checkpoint, meta as run_meta
from qzhou_jax.train import loop as train
from tests.trained_workdir import each_stage


@pytest.mark.slow
def test_merge_stage_merges_the_stages_it_follows(tmp_path):
    overrides = each_stage("train.steps=2", "plot=False", "eval.tasks=()", "checkpoint.async_save=False",
                           "export.at_end=False")
    cfg = train.load_config("configs/demo.py", overrides)
    with cfg.unlocked():
        merged_stage = cfg.stages.stage2.copy_and_resolve_references()
        merged_stage.merge.enabled = True
        merged_stage.merge.method = "linear"
        merged_stage.merge.models = ("stage1", "stage2")
        merged_stage.merge.weights = (1.0, 1.0)
        cfg.stages.stage3 = merged_stage  # stages run in name order (ConfigDict sorts keys)
    summary = train.run(cfg, str(tmp_path))
    assert summary["stages"]["stage3"]["merged"]["method"] == "linear"
    p1, _, _ = checkpoint.restore_params(str(tmp_path / "stage1"))
    p2, _, _ = checkpoint.restore_params(str(tmp_path / "stage2"))
    soup, _, meta = checkpoint.restore_params(str(tmp_path / "stage3"))
    np.testing.assert_allclose(np.asarray(soup["layers"]["mlp"]["up_proj"]["kernel"]),
                               (np.asarray(p1["layers"]["mlp"]["up_proj"]["kernel"]) +
                                np.asarray(p2["layers"]["mlp"]["up_proj"]["kernel"])) / 2, rtol=1e-6)
    assert run_meta.resolve_workdir(str(tmp_path)).endswith("stage3")  # export / evaluate pick the merged model
    assert (tmp_path / "stage3" / "export" / "config.json").exists()
    again = train.run(cfg, str(tmp_path))  # finished: not merged again
    assert again["stages"]["stage3"]["export_dir"] == summary["stages"]["stage3"]["export_dir"]
