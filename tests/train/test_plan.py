"""The ahead-of-time planner on a small config and a small TPU topology (libtpu's compile-only client), its FLOP
count against XLA's on an unrolled step, and the chip table against the device kinds JAX reports."""
import functools
import logging
import os
import subprocess
import sys

import jax
import pytest

from qzhou_jax import losses
from qzhou_jax.batch import Batch
from qzhou_jax.train import hardware
from qzhou_jax.train import plan
from qzhou_jax.train import loop as train
from qzhou_jax import model as qmodel
from qzhou_jax.data import presets
from qzhou_jax.train.step import batch_flops, plain_loss_and_grads
from tests.train.test_step import make_batch


def _tpu(name):
    topologies = pytest.importorskip("jax.experimental.topologies")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: other libtpu users may be running
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
    except Exception as e:  # noqa: BLE001 - libtpu not installable / usable here
        pytest.skip(f"libtpu cannot build {name}: {e}")


def small_config(*overrides):
    cfg = train.load_config("configs/stage1.py", ["--config.model.preset=tiny", "--config.train.steps=1000",
                                                  *overrides])
    cfg.data.datasets = presets.retrieval(16, 32, 3, chinese=False)
    cfg.data.batch_size = dict(retrieval=32, pair_score=32, classification=32)
    return cfg


@pytest.mark.slow
def test_planner_compiles_reports_memory_and_gradcache_shrinks_it():
    _tpu("v5p:2x2x1")
    report = plan.plan(small_config(), "v5p-8")
    assert report["chips"] == 4 and report["device_kind"] == "TPU v5" and report["fits"]
    (t,) = report["tasks"]
    assert t["task"] == "retrieval" and t["shapes"] == dict(batch_size=32, num_candidates=4, query_len=16,
                                                              passage_len=32)
    assert t["total_bytes"] == t["argument_bytes"] + t["output_bytes"] - t["alias_bytes"] + t["temp_bytes"]
    assert t["argument_bytes"] > 0 and t["temp_bytes"] > 0
    # Model FLOPs are the same count train.py's MFU uses; executed adds full remat's second forward.
    assert t["model_flops"] == pytest.approx(batch_flops(qmodel.preset("tiny"), {"anchor_ids": (32, 16),
                                                                             "cand_ids": (32, 4, 32)},
                                                         32 * 16, 32 * 4 * 32))
    assert t["executed_flops"] == pytest.approx(t["model_flops"] * 4 / 3)
    text = plan.format_report(report)
    assert "TPU v5" in text and "temporaries" in text and "fits" in text and "days for 1,000 steps" in text
    # GradCache: activations are held for one chunk, not the whole batch (without remat, where they dominate).
    plain = plan.plan(small_config("--config.model.remat_policy=none"), "v5p-8")
    chunked = plan.plan(small_config("--config.model.remat_policy=none", "--config.train.gradcache_chunks=4"),
                        "v5p-8")
    assert chunked["tasks"][0]["temp_bytes"] < 0.8 * plain["tasks"][0]["temp_bytes"]  # measured 0.67


@pytest.mark.slow
def test_planner_cli_fails_clearly_over_budget():
    _tpu("v5p:2x2x1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "qzhou_jax.plan", "--config=configs/stage1.py", "--topology=v5p-8", "--hbm-gib=0.0001",
         "--config.model.preset=tiny", "--config.data.batch_size.retrieval=8"],
        capture_output=True, text=True, cwd=root, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    out = result.stdout
    assert "OVER BUDGET" in out and "gradcache_chunks" in out and "remat_policy" in out and "mesh.shape" in out


@pytest.mark.slow
def test_a_step_the_tpu_compiler_refuses_is_reported_over_budget():
    """XLA's TPU compiler refuses a program whose temporaries exceed HBM: the plan reports it (its temporaries, the
    state's shards) instead of a traceback."""
    _tpu("v5e:2x2")
    cfg = small_config("--config.model.remat_policy=none")
    cfg.data.datasets = presets.retrieval(16, 2048, 3, chinese=False)
    cfg.data.batch_size = dict(retrieval=256, pair_score=32, classification=32)
    report = plan.plan(cfg, "v5e-4")
    (t,) = report["tasks"]
    assert not report["fits"] and "RESOURCE_EXHAUSTED" in t["refused"]
    assert t["temp_bytes"] > 16 * plan.GiB and t["xla_flops"] is None
    assert t["argument_bytes"] >= t["output_bytes"] == t["alias_bytes"] > 0  # the state's shards, donated
    text = plan.format_report(report)
    assert "OVER BUDGET" in text and "the TPU compiler refused it" in text and "n/a" in text


def test_refusal_message_parsing():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (19.18G) "
           "exceeds available HBM (15.75G).")
    assert plan.refused_temporaries(msg) == int(19.18 * 2 ** 30)
    assert plan.refused_temporaries("RESOURCE_EXHAUSTED: something else") is None


def test_gpu_topology_without_a_cuda_compiler_says_so():
    with pytest.raises(plan.PlanError, match="h100x8.*cannot compile for CUDA without a device"):
        plan.topology_devices("h100x8")
    with pytest.raises(ValueError, match="unknown topology 'v9-8'"):
        plan.topology_devices("v9-8")


def test_slice_shapes_and_chip_counts():
    assert hardware.parse_topology("v5p-128") == ("v5p", 64)
    assert hardware.parse_topology("v5e-256") == ("v5e", 256)
    assert hardware.parse_topology("h200x64") == ("h200", 64)
    assert [plan._near_cube(n, 3) for n in (4, 8, 16, 32, 64, 128)] == \
        ["2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8"]
    assert [plan._near_cube(n, 2) for n in (4, 8, 256)] == ["2x2", "2x4", "16x16"]


def test_analytic_flops_match_xla_on_an_unrolled_step_and_scan_undercounts():
    """XLA's cost_analysis counts a while body once: unrolled it agrees with flops_per_token (the planner's and
    MFU's count), scanned it reports about one layer's worth of the layer FLOPs."""
    cfg = qmodel.ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4,
                             num_kv_heads=2, max_position_embeddings=128)
    batch = make_batch("retrieval", b=8, c=2, la=32, lc=32)
    batch = Batch.from_host({**batch, "anchor_ids": batch["anchor_ids"] % 256, "cand_ids": batch["cand_ids"] % 256})

    def xla_flops(config):
        params = jax.eval_shape(lambda: qmodel.init_params(config, jax.random.key(0)))
        fn = functools.partial(plain_loss_and_grads, config=config, loss_config=losses.LossConfig())
        return jax.jit(lambda p, b: fn(p, batch=b)[2]).lower(params, batch).compile().cost_analysis()["flops"]

    # All positions count (padding is computed too): padded tokens, as the planner's worst case.
    analytic = batch_flops(cfg, {"anchor_ids": (8, 32), "cand_ids": (8, 2, 32)}, 8 * 32, 8 * 2 * 32)
    unrolled = xla_flops(cfg.replace(scan_layers=False))
    scanned = xla_flops(cfg.replace(scan_layers=True))
    assert unrolled == pytest.approx(analytic, rel=0.1)
    assert scanned < 0.5 * unrolled


def test_chip_table_matches_the_kinds_jax_reports(caplog):
    for name in ("v5p:2x2x1", "v5e:2x2", "v4:2x2x1", "v6e:2x2"):
        try:
            kind = _tpu(name)[0].device_kind
        except pytest.skip.Exception:
            continue
        assert hardware.lookup(kind) is not None, kind
    assert hardware.lookup("TPU v5").name == "v5p" and hardware.lookup("TPU v5 lite").name == "v5e"
    assert hardware.lookup("NVIDIA H100 80GB HBM3").peak_flops == 989e12
    assert hardware.lookup("cpu") is None
    with caplog.at_level(logging.WARNING, logger="qzhou_jax.train.hardware"):
        assert hardware.peak_flops("Mystery chip 9") is None
        assert hardware.peak_flops("Mystery chip 9") is None
        assert hardware.peak_flops("Mystery chip 9", override=1e12) == 1e12
    warnings = [r.getMessage() for r in caplog.records if "Mystery chip 9" in r.getMessage()]
    assert len(warnings) == 1 and "peak_flops_per_device" in warnings[0]
