"""The trainer end to end on the demo config: learning, config overrides, non-finite stop, stage hand-off."""
import os

import numpy as np
import pytest

from qzhou_jax.run import checkpoint
from qzhou_jax.train import loop as train
from qzhou_jax.cli import train as train_cli
from qzhou_jax.train.metrics import read_metrics
from tests.cli_run import run_main
from tests.trained_workdir import each_stage

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
def test_both_stages_hand_off_and_export_matches_sentence_transformers(tmp_path, monkeypatch):
    """demo.py runs stage 1 then stage 2 from stage 1's params, on 8 fake devices; the export serves the same
    embeddings through sentence-transformers as the JAX encoder does from the checkpoint."""
    import jax
    from qzhou_jax.encode import Encoder
    from qzhou_jax.tokenizer import load_tokenizer
    from sentence_transformers import SentenceTransformer

    overrides = each_stage("train.steps=3", "plot=False", "eval.tasks=()", "mesh.shape=(2,2,2)",
                           "checkpoint.async_save=False")
    overrides += ["--config.stages.stage1.export.at_end=False"]
    cfg = train.load_config("configs/demo.py", overrides)
    started = []  # per stage run: its workdir and the params init_params gave it
    init_params, run_stage = train.init_params, train._run_stage

    def recording_run_stage(stage_cfg, workdir, after_step):
        started.append({"workdir": workdir})
        return run_stage(stage_cfg, workdir, after_step)

    def recording_init_params(*args, **kwargs):
        params = init_params(*args, **kwargs)
        started[-1]["params"] = jax.device_get(params)
        return params
    monkeypatch.setattr(train, "_run_stage", recording_run_stage)
    monkeypatch.setattr(train, "init_params", recording_init_params)
    summary = train.run(cfg, str(tmp_path))
    assert summary["stages"]["stage2"]["step"] == 3

    # Stage 2 started from stage 1's final params (what run() itself passed on, recorded by the wrapper).
    final1, _, _ = checkpoint.restore_params(str(tmp_path / "stage1"))
    assert started[1]["workdir"] == str(tmp_path / "stage2")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), started[1]["params"],
                 final1)
    assert not np.array_equal(np.asarray(started[0]["params"]["norm"]["scale"]),
                              np.asarray(final1["norm"]["scale"]))  # stage 1 did train away from its init

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


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = each_stage("train.steps=4", "train.log_every=1", "checkpoint.every=100", "eval.tasks=()", "plot=False")
STAGES += ["--config.stages.stage1.export.at_end=False"]


def _popen(workdir, *flags, config="configs/demo.py"):
    import subprocess
    import sys
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "qzhou_jax.train", f"--config={config}", f"--workdir={workdir}", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_at(proc, marker, *signals):
    import time
    lines, deadline = [], time.time() + 900
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.5)
            break
        assert time.time() < deadline, "".join(lines[-20:])
    out, _ = proc.communicate(timeout=900)
    return "".join(lines) + out


@pytest.mark.slow
def test_sigterm_in_a_multi_stage_run_stops_it_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
    import signal
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    proc = _popen(straight, *STAGES)
    out = proc.communicate(timeout=1200)[0]
    assert proc.returncode == 0, out[-3000:]

    proc = _popen(stopped, *STAGES)
    out = _signal_at(proc, "step 2/4", signal.SIGTERM)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: saved checkpoint at step" in out and "stopped during stage1" in out
    assert not (stopped / "stage2").exists()  # stage 2 never started from the preempted checkpoint

    proc = _popen(stopped, *STAGES)
    out = proc.communicate(timeout=1200)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from checkpoint step" in out and "==== stage2 ====" in out
    for name in ("model.safetensors", "config.json"):
        assert (straight / "stage2" / "export" / name).read_bytes() == (stopped / "stage2" / "export" / name).read_bytes()


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(tmp_path):
    import signal
    proc = _popen(tmp_path, "--config.train.steps=100000", "--config.checkpoint.every=100000", "--config.plot=False",
                  "--config.eval.tasks=()", "--config.train.log_every=1", config=STAGE1)
    out = _signal_at(proc, "step 1/", signal.SIGINT, signal.SIGINT)
    assert "SIGINT: saving a checkpoint at the end of this step" in out  # the first one is ours, not a traceback
    assert proc.returncode == 130 and "second Ctrl-C: exiting now" in out, out[-3000:]
    assert "KeyboardInterrupt" not in out


def test_aligned_steps_compile_each_shape_once_and_meet_at_a_barrier_before_running_it(monkeypatch):
    """train.CompiledSteps: the same results as the plain step function; one compile per (task, batch shapes); with
    several processes one barrier per new program, after its compile and before its first run."""
    import jax
    from jax.experimental import multihost_utils
    from ml_collections import ConfigDict

    from qzhou_jax import batch as batch_lib, losses, model as qmodel, sharding
    from qzhou_jax.train import optim
    from qzhou_jax.train.step import abstract_state, create_state, make_step_fn
    from tests.train.test_step import CFG, PARAMS, make_batch

    tx, schedule = optim.make_optimizer(ConfigDict(dict(lr=1e-3, warmup_steps=0, decay="constant",
                                                        final_lr_ratio=1.0, b1=0.9, b2=0.999, eps=1e-8,
                                                        weight_decay=0.0, grad_clip=1.0, grad_accum_steps=1)), 10)
    rules = sharding.ShardingRules.for_params(sharding.make_mesh((-1, 1, 1)), *qmodel.abstract_params(CFG))
    _, state_shardings = abstract_state(CFG, tx, rules)
    step = make_step_fn(config=CFG, loss_config=losses.LossConfig(), tx=tx, schedule=schedule,
                        gradcache_chunks=0, rules=rules, state_shardings=state_shardings)
    init = jax.jit(lambda p: create_state(p, tx), out_shardings=state_shardings)
    host = [make_batch("retrieval", seed=0), make_batch("retrieval", seed=1), make_batch("retrieval", la=8, seed=2)]
    batches = [jax.device_put(batch_lib.Batch.from_host(b), batch_lib.shardings(rules, batch_lib.Batch.from_host(b)))
               for b in host]

    events = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: events.append(name))
    aligned = train.CompiledSteps(step, rules.mesh)
    state = init(jax.device_put(PARAMS, state_shardings.params))
    got = []
    for b in batches:
        state, metrics = aligned(state, b)
        got.append(float(metrics["loss"]))
        events.append(f"ran {len(aligned.compiled)}")
    assert len(aligned.compiled) == 2  # the third batch's anchors are longer: a second program
    assert events == ["qzhou_jax.train: step program 0 compiled", "ran 1", "ran 1",
                      "qzhou_jax.train: step program 1 compiled", "ran 2"]

    monkeypatch.undo()
    state = init(jax.device_put(PARAMS, state_shardings.params))
    expected = []
    for b in batches:
        state, metrics = step(state, b)
        expected.append(float(metrics["loss"]))
    assert got == expected


def _train_cli(argv, capsys):
    """train.main as a user runs it: (exit status, stderr)."""
    status, _, err = run_main(train_cli.main, argv, capsys)
    return status, err


def test_bad_rows_without_skipping_are_one_line_naming_file_and_line(tmp_path, capsys):
    import json
    import textwrap

    rows = [json.dumps({"query": f"q {i}", "pos": [f"p {i}"]}) for i in range(40)]
    (tmp_path / "ret.jsonl").write_text("\n".join(rows[:5] + ['{"pos": ["no query"]}'] + rows[5:]) + "\n")
    (tmp_path / "cfg.py").write_text(textwrap.dedent(f"""
        import importlib.util

        spec = importlib.util.spec_from_file_location("demo_config", {os.path.join(ROOT, "configs", "demo.py")!r})
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)


        def get_config():
            c = demo.stage1()
            c.data.datasets = [dict(name="ret", source="jsonl:{tmp_path}/ret.jsonl", task="retrieval",
                                    num_negatives=0)]
            c.data.batch_size = dict(retrieval=8, pair_score=8, classification=8)
            c.eval.tasks = ()
            return c
        """))
    status, err = _train_cli(["--config", str(tmp_path / "cfg.py"), "--workdir", str(tmp_path / "run")], capsys)
    assert (status, err) == (2, f"error: {tmp_path}/ret.jsonl:6: field 'query' is missing\n")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match=r"ret.jsonl:6: field 'query' is missing"):  # --debug: the exception
        train_cli.main(["--config", str(tmp_path / "cfg.py"), "--workdir", str(tmp_path / "run"), "--debug"])


def test_a_read_only_workdir_is_named_before_anything_loads(tmp_path, capsys, monkeypatch):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (not root?)")
    loaded = []
    monkeypatch.setattr(train.data_pipeline, "build_pipeline", lambda *a, **k: loaded.append(a))
    try:
        status, err = _train_cli(["--config", STAGE1, "--workdir", str(mount / "run")], capsys)
    finally:
        subprocess.run(["umount", "-l", str(mount)])
    assert (status, err) == (2, f"error: --workdir: cannot write to {mount}/run (Read-only file system)\n")
    assert loaded == []
