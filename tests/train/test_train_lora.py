"""Parameter-efficient fine-tuning through the trainer: LoRA (with dropout, remat, GradCache, packing, a sharded
mesh, checkpoints and an interrupted run resumed exactly; the base bit-identical after training; optimizer state
for the adapters only; merged export = unmerged forward; the PEFT adapter written) and top-N partial fine-tuning."""
import json

import jax
import numpy as np
import pytest

from qzhou_jax.encode import Encoder
from qzhou_jax.hf.load import load_params
from qzhou_jax.model import ModelConfig, lora
from qzhou_jax.run import checkpoint
from qzhou_jax.train import loop as train
from qzhou_jax.train.metrics import read_metrics
from qzhou_jax.tokenizer import load_tokenizer
from tests import oracle

COMMON = ["--config.train.log_every=1", "--config.checkpoint.every=2", "--config.checkpoint.async_save=False",
          "--config.plot=False", "--config.eval.tasks=()", "--config.mesh.shape=(2,2,2)", "--config.train.steps=4",
          "--config.optim.warmup_steps=1", "--config.optim.lr=1e-2"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random Qwen2 with the Qwen2.5 vocabulary (the demo data's built-in tokenizer)."""
    directory = tmp_path_factory.mktemp("base")
    oracle.make_hf_model(directory, "gqa", vocab_size=151680)
    return str(directory)


def _cfg(base_dir, *extra):
    return train.load_config("configs/demo.py:stage1", COMMON + [f"--config.model.hf_dir={base_dir}", *extra])


class Interrupt(Exception):
    pass


def _stop_after(n):
    def after_step(step, manager):
        if step == n:
            raise Interrupt(step)
    return after_step


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


LORA = ["--config.model.lora.rank=4", "--config.model.lora.alpha=8.0", "--config.model.lora.dropout=0.1",
        "--config.model.lora.targets=('q_proj','v_proj','o_proj','down_proj')", "--config.model.remat_policy=full",
        "--config.train.gradcache_chunks=2", "--config.data.packing=128", "--config.export.peft_adapter=True",
        "--config.export.dtype=float32"]


@pytest.fixture(scope="module")
def lora_runs(base_dir, tmp_path_factory):
    """A LoRA run straight through, and the same run interrupted after step 3 (checkpoint 2) and resumed."""
    root = tmp_path_factory.mktemp("lora")
    straight, interrupted = root / "straight", root / "interrupted"
    summary = train.run(_cfg(base_dir, *LORA), str(straight))
    with pytest.raises(Interrupt):
        train.run(_cfg(base_dir, *LORA), str(interrupted), after_step=_stop_after(3))
    assert checkpoint.restore_params(str(interrupted), merge_lora=False)[2]["step"] == 2
    train.run(_cfg(base_dir, *LORA), str(interrupted))
    return summary, straight, interrupted


def test_lora_trains_only_adapters_resumes_exactly_and_exports_merged(base_dir, lora_runs):
    summary, straight, interrupted = lora_runs

    # Exact resume: same losses at every step, same final params (adapters, dropout masks from (seed, step)).
    a, b = _losses(straight), _losses(interrupted)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_array_equal([a[s] for s in range(1, 5)], [b[s] for s in range(1, 5)])
    params, config, meta = checkpoint.restore_params(str(straight), merge_lora=False)
    _assert_trees_equal(params, checkpoint.restore_params(str(interrupted), merge_lora=False)[0])

    # The base is bit-identical to what was loaded; the adapters trained; Adam's state covers the adapters only.
    assert config.lora_rank == 4 and config.lora_targets == ("q_proj", "v_proj", "o_proj", "down_proj")
    adapters, rest = lora.split_adapters(params)
    _assert_trees_equal(rest, load_params(base_dir, ModelConfig.from_hf(base_dir)))
    assert all(np.any(np.asarray(x)) for x in jax.tree.leaves(adapters))
    opt_leaves = [k for k in meta["state_shapes"] if k.startswith("['opt_state']")]
    assert opt_leaves and all("lora_a" in k or "lora_b" in k or "count" in k or "notfinite" in k
                              or "last_finite" in k for k in opt_leaves), opt_leaves
    assert any("lora_b" in k for k in opt_leaves)

    # Export: merged Qwen2 weights that serve the unmerged model's embeddings; the PEFT adapter beside it.
    texts = ["What causes tides?", "The moon's gravity pulls on the oceans.", "short"]
    unmerged = Encoder(params, config, load_tokenizer(None), max_length=64).encode(texts, "retrieve passages")
    served = Encoder.from_pretrained(summary["export_dir"], max_length=64).encode(texts, "retrieve passages")
    np.testing.assert_allclose(served, unmerged, atol=2e-5)
    merged, merged_config, _ = checkpoint.restore_params(str(straight))
    assert merged_config.lora_rank == 0 and not lora.split_adapters(merged)[0]
    adapter_config = json.loads((straight / "peft_adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["base_model_name_or_path"] == base_dir


def test_export_cli_writes_the_merged_model_and_the_peft_adapter(lora_runs, tmp_path):
    from safetensors.numpy import load_file

    from qzhou_jax.cli import export

    summary, straight, _ = lora_runs
    export.main(["--workdir", str(straight), "--out", str(tmp_path / "hf"), "--dtype", "float32",
                 "--peft-adapter", str(tmp_path / "adapter")])
    ours, trainers = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "adapter",
                                                                                 straight / "peft_adapter"))
    assert sorted(ours) == sorted(trainers) and len(ours) == 2 * 4 * 2  # 2 layers x 4 targets x (A, B)
    for key in ours:
        np.testing.assert_array_equal(ours[key], trainers[key])
    exported, at_end = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "hf",
                                                                         straight / "export"))
    for key in at_end:  # merged on 8 devices at the end of training, on one here
        np.testing.assert_allclose(exported[key], at_end[key], rtol=1e-6, atol=1e-7, err_msg=key)
    record = json.loads((tmp_path / "hf" / "qzhou_export.json").read_text())
    assert record["step"] == 4 and record["lora_base"]
    with pytest.raises(SystemExit):  # a run without LoRA has no adapter to write
        export.main(["--params-from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x"),
                     "--peft-adapter", str(tmp_path / "y")])


def test_top_n_trains_only_the_top_layers(base_dir, tmp_path):
    train.run(_cfg(base_dir, "--config.model.trainable=top:1", "--config.train.steps=2",
                   "--config.export.at_end=False"), str(tmp_path))
    params, config, meta = checkpoint.restore_params(str(tmp_path))
    base = load_params(base_dir, ModelConfig.from_hf(base_dir))
    np.testing.assert_array_equal(np.asarray(params["embedding"]), np.asarray(base["embedding"]))
    jax.tree.map(lambda p, q: np.testing.assert_array_equal(np.asarray(p)[:1], np.asarray(q)[:1]),
                 params["layers"], base["layers"])
    changed = jax.tree.map(lambda p, q: not np.array_equal(np.asarray(p)[1:], np.asarray(q)[1:]),
                           params["layers"], base["layers"])
    assert all(jax.tree.leaves(changed))
    # Adam's moments are the top layer's shape (1 of 2 layers), no embedding.
    shapes = {k: v for k, v in meta["state_shapes"].items() if k.startswith("['opt_state']")}
    assert not any("embedding" in k for k in shapes)
    layer_moments = [v for k, v in shapes.items() if "['layers']" in k]
    assert layer_moments and all(v.startswith("(1,") for v in layer_moments), layer_moments
