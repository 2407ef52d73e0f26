"""The trainer end to end on the demo config: learning, config overrides, non-finite stop, stage hand-off."""
import os

import numpy as np
import pytest

from qzhou_jax import checkpoint, train
from qzhou_jax.metrics_writer import read_metrics

STAGE1 = "configs/demo.py:stage1"


def demo(overrides=(), arg=STAGE1):
    base = ["--config.checkpoint.async_save=False", "--config.export.at_end=False", "--config.plot=False",
            "--config.eval.tasks=()"]
    return train.load_config(arg, base + list(overrides))


def test_unknown_override_is_rejected_by_name():
    with pytest.raises(Exception, match="lrr"):
        train.load_config(STAGE1, ["--config.optim.lrr=1e-3"])
    cfg = train.load_config(STAGE1, ["--config.optim.lr=0.5", "--config.mesh.shape=(2,-1,1)"])
    assert cfg.optim.lr == 0.5 and tuple(cfg.mesh.shape) == (2, -1, 1)


def test_demo_learns_and_writes_metrics(tmp_path):
    cfg = demo(["--config.train.steps=30", "--config.train.log_every=1", "--config.checkpoint.every=100"])
    summary = train.run(cfg, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(1, 31))
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    for key in ("grad_norm", "learning_rate", "examples_per_s", "tokens_per_s", "tflops_per_s_per_device"):
        assert np.isfinite(rows[-1][key])
    assert any(k.startswith("loss/dataset/") for k in rows[-1])
    assert os.listdir(tmp_path / "tensorboard")
    assert summary["step"] == 30


def test_nonfinite_run_stops_with_clear_message(tmp_path):
    cfg = demo(["--config.train.steps=10", "--config.train.log_every=1", "--config.train.max_consecutive_nonfinite=2",
                "--config.optim.lr=1e30", "--config.optim.warmup_steps=1", "--config.optim.grad_clip=0"])
    with pytest.raises(train.NonFiniteError, match="non-finite"):
        train.run(cfg, str(tmp_path))


@pytest.mark.slow
def test_both_stages_hand_off_and_export_matches_sentence_transformers(tmp_path):
    """demo.py runs stage 1 then stage 2 from stage 1's params, on 8 fake devices; the export serves the same
    embeddings through sentence-transformers as the JAX encoder does from the checkpoint."""
    import jax
    from qzhou_jax import sharding
    from qzhou_jax.encode import Encoder
    from qzhou_jax.tokenizer import load_tokenizer
    from sentence_transformers import SentenceTransformer

    stage = "--config.stages.stage{}."
    overrides = []
    for i in (1, 2):
        overrides += [stage.format(i) + "train.steps=3", stage.format(i) + "plot=False",
                      stage.format(i) + "eval.tasks=()", stage.format(i) + "mesh.shape=(2,2,2)",
                      stage.format(i) + "checkpoint.async_save=False"]
    overrides += ["--config.stages.stage1.export.at_end=False"]
    cfg = train.load_config("configs/demo.py", overrides)
    summary = train.run(cfg, str(tmp_path))
    assert summary["stages"]["stage2"]["step"] == 3

    # Stage 2 started from stage 1's final params.
    stage2 = cfg.stages.stage2.copy_and_resolve_references()
    stage2.init_from = str(tmp_path / "stage1")
    model_config = train.build_model_config(stage2)
    mesh = sharding.make_mesh((2, 2, 2))
    abstract, logical = train.qmodel.abstract_params(model_config)
    started = train.init_params(stage2, model_config, sharding.param_shardings(abstract, logical, mesh))
    final1, _, _ = checkpoint.restore_params(str(tmp_path / "stage1"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), started, final1)

    # The export (written from params sharded over 8 devices) serves what the trained checkpoint encodes.
    params, config, _ = checkpoint.restore_params(str(tmp_path / "stage2"))
    ours = Encoder(params, config, load_tokenizer(None), max_length=64)
    texts = ["What causes tides?", "The moon's gravity pulls on the oceans.", "短文本测试"]
    st = SentenceTransformer(summary["export_dir"], trust_remote_code=True, device="cpu")
    for instruction in (None, "Given a question, retrieve passages that answer it"):
        expected = ours.encode(texts, instruction)
        prompt = None if instruction is None else f"Instruct: {instruction}\nQuery: "
        got = st.encode(texts, prompt=prompt, convert_to_numpy=True, normalize_embeddings=True)
        assert (got * expected).sum(-1).min() >= 0.99999
        assert np.abs(got - expected).max() <= 1e-4


def test_gradient_accumulation_applies_every_k_steps(tmp_path):
    cfg = demo(["--config.train.steps=4", "--config.train.log_every=1", "--config.optim.grad_accum_steps=2",
                "--config.optim.warmup_steps=1", "--config.checkpoint.every=1", "--config.checkpoint.keep=5"])
    train.run(cfg, str(tmp_path))
    scale = [np.asarray(checkpoint.restore_params(str(tmp_path), step=i)[0]["norm"]["scale"]) for i in (1, 2, 3, 4)]
    # Micro-steps 1 and 3 only accumulate; 2 and 4 apply (the first applied update has warm-up lr 0).
    np.testing.assert_array_equal(scale[0], scale[1])
    np.testing.assert_array_equal(scale[1], scale[2])
    assert not np.array_equal(scale[2], scale[3])
