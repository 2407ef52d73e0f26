"""Hard negatives refreshed during training (mine.every): the refresh mines with the live params, the next batches
draw the new negatives in the same sampling order, the refresh is part of the checkpointed state (an interrupted
run resumes exactly), its cost is logged."""
import json
import os

import jax
import numpy as np
import pytest

from qzhou_jax import model as qmodel
from qzhou_jax.data import pipeline
from qzhou_jax.mining.refresh import Refresher
from qzhou_jax.run import checkpoint
from qzhou_jax.train import loop as train
from qzhou_jax.train.metrics import read_metrics
from qzhou_jax.tokenizer import PromptConfig, load_tokenizer

COMMON = ["--config.train.log_every=1", "--config.checkpoint.every=3", "--config.checkpoint.async_save=False",
          "--config.plot=False", "--config.eval.tasks=()", "--config.export.at_end=False", "--config.mine.every=2",
          "--config.mine.window=(2,12)", "--config.mine.batch_size=64", "--config.train.steps=5"]


def _cfg(*extra):
    cfg = train.load_config("configs/demo.py:stage1", COMMON + list(extra))
    for entry in cfg.data.datasets:  # 64 rows per dataset: mining stays cheap
        entry["max_examples"] = 64
    return cfg


def _texts(batch):
    return [tuple(c) for c in batch["candidates"]], list(batch["anchor"])


def test_refresh_mines_with_the_params_and_the_pipeline_continues_in_order(tmp_path):
    cfg = _cfg()
    model_config = train.build_model_config(cfg)
    params = qmodel.init_params(model_config, jax.random.key(0))
    refresher = Refresher(cfg, str(tmp_path), load_tokenizer(None), model_config, PromptConfig(), total_steps=5)
    assert refresher.names == ["scifact", "trecqa"] and refresher.due(2) and not refresher.due(3)
    assert not refresher.due(6)  # past the last step
    record = refresher.refresh(2, params)
    assert record["step"] == 2 and set(record["sources"]) == {"scifact", "trecqa"}
    for name, path in record["sources"].items():
        assert path == str(tmp_path / "mined" / "step_2" / f"{name}.jsonl")
        rows = [json.loads(line) for line in open(path)]
        assert len(rows) == 64 and all(m["source"] == "mined" for r in rows for m in r["neg_meta"])
        assert all(2 < m["rank"] <= 12 for r in rows for m in r["neg_meta"])
    assert record["cost"]["rows"] == 128 and record["cost"]["seconds"] > 0

    old, _ = pipeline.build_pipeline(cfg.data, None, process_index=0, process_count=1)
    new, _ = pipeline.build_pipeline(refresher.config_for(record).data, None, process_index=0, process_count=1)
    old_it, new_it = iter(old), iter(new)
    for _ in range(2):
        next(old_it)
    new_it.set_state(old_it.get_state())  # what the trainer does after the refresh at step 2
    mined_negs = {n for path in record["sources"].values() for r in map(json.loads, open(path)) for n in r["neg"]}
    for _ in range(3):
        (old_c, old_a), (new_c, new_a) = _texts(next(old_it)), _texts(next(new_it))
        assert old_a == new_a  # the same samples in the same order ...
        assert [c[0] for c in old_c] == [c[0] for c in new_c]  # ... with their positives
        assert all(c[1] in mined_negs for c in new_c) and old_c != new_c  # ... and the new negatives

    (tmp_path / "mined" / "step_2" / "scifact.jsonl").write_text("tampered\n")
    with pytest.raises(ValueError, match="changed since it was mined"):
        refresher.config_for(record)


class Interrupt(Exception):
    pass


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


@pytest.mark.slow
def test_refresh_during_training_resumes_exactly(tmp_path):
    straight, interrupted, plain = tmp_path / "straight", tmp_path / "interrupted", tmp_path / "plain"
    train.run(_cfg(), str(straight))

    def stop_after_4(step, manager):
        if step == 4:  # after the refresh at step 4, before a checkpoint holds it
            raise Interrupt()
    with pytest.raises(Interrupt):
        train.run(_cfg(), str(interrupted), after_step=stop_after_4)
    train.run(_cfg(), str(interrupted))
    train.run(_cfg("--config.mine.every=0", "--config.train.steps=3"), str(plain))

    a, b, p = _losses(straight), _losses(interrupted), _losses(plain)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal([a[s] for s in range(1, 6)], [b[s] for s in range(1, 6)])
    pa, _, meta = checkpoint.restore_params(str(straight))
    pb, _, _ = checkpoint.restore_params(str(interrupted))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)
    # Steps 1-2 train on the configured negatives (as without refresh); step 3 on the refreshed ones.
    assert [a[1], a[2]] == [p[1], p[2]] and a[3] != p[3]

    assert meta["mined"]["step"] == 4  # the final checkpoint records the refresh in force
    step3 = checkpoint.restore_params(str(straight), step=3)[2]
    assert step3["mined"]["step"] == 2
    costs = [r for r in read_metrics(str(straight)) if "mine/seconds" in r]
    assert [r["step"] for r in costs] == [2, 4] and all(r["mine/seconds"] > 0 for r in costs)
    mined = straight / "mined"
    assert os.path.exists(mined / "step_4" / "cache") and not os.path.exists(mined / "step_2" / "cache")
    for name in ("scifact", "trecqa"):
        assert (mined / "step_2" / f"{name}.jsonl").read_bytes() == \
            (interrupted / "mined" / "step_2" / f"{name}.jsonl").read_bytes()
