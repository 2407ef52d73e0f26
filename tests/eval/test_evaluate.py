"""The evaluate CLI on a tiny random HF model: every task, the JSON rows, the table, --compare, workdirs, and one score
recomputed end to end with the PyTorch oracle."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from qzhou_jax.run import checkpoint
from qzhou_jax.data import shared_data
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.cli import evaluate as evaluate_cli
from qzhou_jax.eval import tasks
from qzhou_jax.tokenizer import format_query, load_tokenizer
from tests import oracle

TINY = dict(vocab_size=151680, hidden_size=32, intermediate_size=64)
COMMON = ["--max-examples", "8", "--max-length", "48", "--batch-size", "8"]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("tiny_a"), tmp_path_factory.mktemp("tiny_b")
    return (str(a), oracle.make_hf_model(a, "gqa", seed=0, **TINY)), (str(b), oracle.make_hf_model(b, "gqa", seed=1,
                                                                                                   **TINY))


@pytest.fixture(scope="module")
def all_tasks_run(hf_dirs, tmp_path_factory):
    (model_dir, _), _ = hf_dirs
    out = tmp_path_factory.mktemp("results") / "results.json"
    rows = evaluate_cli.main(["--model", model_dir, "--tasks", "all", "--output", str(out)] + COMMON)
    return model_dir, out, rows


def _main_scores(rows, model=None):
    return {r["task"]: r["value"] for r in rows if r["metric"] == "main_score" and model in (None, r["model"])}


def test_every_task_runs_and_the_json_holds_finite_in_range_scores(all_tasks_run, capsys):
    model_dir, out, rows = all_tasks_run
    written = json.loads(out.read_text())
    assert written == rows
    assert all(set(r) == {"model", "task", "split", "metric", "value"} and r["model"] == model_dir for r in written)
    main = _main_scores(written)
    assert list(main) == list(tasks.TASKS)
    for task, value in main.items():
        low = -1.0 if tasks.TASKS[task].type == "STS" else 0.0
        assert value is not None and np.isfinite(value) and low <= value <= 1.0, (task, value)
        metric = tasks.TASKS[task].main_metric
        assert value == next(r["value"] for r in written if r["task"] == task and r["metric"] == metric)
    splits = {r["task"]: r["split"] for r in written}
    assert splits["Ocnli"] == "dev" and splits["SciFact"] == "test"


def test_table_prints_each_main_score_x100(all_tasks_run, capsys):
    _, _, rows = all_tasks_run
    table = ev.results_table(rows)
    for task, value in _main_scores(rows).items():
        line = next(line for line in table.splitlines() if line.startswith(task + " "))
        assert f"{100 * value:.2f}" in line and tasks.TASKS[task].main_metric in line
    mean = np.mean(list(_main_scores(rows).values()))
    assert f"{100 * mean:.2f}" in next(line for line in table.splitlines() if line.startswith("mean"))


def test_sts_score_matches_the_torch_oracle(hf_dirs, tmp_path):
    (model_dir, torch_model), _ = hf_dirs
    out = tmp_path / "r.json"
    rows = evaluate_cli.main(["--model", model_dir, "--tasks", "STSBenchmark", "--output", str(out)] + COMMON)
    pairs = shared_data.read_sts("stsb", "test")
    keep = tasks.subsample(len(pairs), 8)
    tokenizer = load_tokenizer()
    instruction = tasks.get_task("STSBenchmark").instruction

    def embed(text):
        ids = tokenizer(format_query(text, instruction), add_special_tokens=False)["input_ids"][:48]
        hidden = oracle.torch_hidden(torch_model, [ids], [[1] * len(ids)], bidirectional=True)
        return oracle.torch_mean_pool(hidden, [[1] * len(ids)])[0]

    cos = [float(embed(pairs[i].text_a) @ embed(pairs[i].text_b)) for i in keep]
    expected = scipy.stats.spearmanr([pairs[i].score for i in keep], cos)[0]
    assert _main_scores(rows)["STSBenchmark"] == pytest.approx(expected, abs=1e-4)


def test_compare_puts_two_models_side_by_side(hf_dirs, tmp_path, capsys):
    (a, _), (b, _) = hf_dirs
    out = tmp_path / "cmp.json"
    rows = evaluate_cli.main(["--model", a, "--compare", b, "--tasks", "STSBenchmark,TrecQAReranking",
                    "--output", str(out)] + COMMON)
    printed = capsys.readouterr().out
    assert {r["model"] for r in rows} == {a, b}
    sa, sb = _main_scores(rows, a), _main_scores(rows, b)
    assert sa != sb  # different weights, different scores
    line = next(line for line in printed.splitlines() if line.startswith("STSBenchmark"))
    assert f"{100 * sa['STSBenchmark']:.2f}" in line and f"{100 * sb['STSBenchmark']:.2f}" in line
    assert f"{100 * (sb['STSBenchmark'] - sa['STSBenchmark']):+.2f}" in line
    assert f"A: {a}" in printed and f"B: {b}" in printed
    single = evaluate_cli.main(["--model", a, "--tasks", "STSBenchmark", "--output", str(tmp_path / "one.json")] + COMMON)
    assert _main_scores(single)["STSBenchmark"] == pytest.approx(sa["STSBenchmark"], abs=1e-6)


def test_workdir_model_restores_params_and_recorded_tokenizer(hf_dirs, tmp_path, monkeypatch):
    (model_dir, _), _ = hf_dirs
    from qzhou_jax.hf.load import load_params
    from qzhou_jax.model import ModelConfig

    config = ModelConfig.from_hf(model_dir, dtype="bfloat16")
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    calls = []

    def fake_restore(path, step=None, shardings=None):
        calls.append((path, step))
        meta = {"step": 7, "config": {"model": {"tokenizer": str(tmp_path / "moved_away"), "hf_dir": ""}}}
        return load_params(model_dir, config), config, meta

    monkeypatch.setattr(checkpoint, "restore_params", fake_restore)
    with pytest.warns(UserWarning, match="moved_away.*built-in"):
        rows = evaluate_cli.main(["--model", str(workdir), "--step", "7", "--tasks", "STSBenchmark",
                        "--output", str(tmp_path / "w.json")] + COMMON)
    assert calls == [(str(workdir), 7)] and rows[0]["model"] == f"{workdir}@7"
    direct = evaluate_cli.main(["--model", model_dir, "--tasks", "STSBenchmark", "--output", str(tmp_path / "d.json")] + COMMON)
    assert _main_scores(rows)["STSBenchmark"] == pytest.approx(_main_scores(direct)["STSBenchmark"], abs=1e-5)
    # --dtype (default float32) sets the compute dtype over the run's bf16: the HF directory's embeddings exactly
    with pytest.warns(UserWarning):
        from_workdir = ev.load_encoder(str(workdir), step=7, max_length=48)
    assert from_workdir.config.dtype == "float32"
    texts = ["a short text", "Bidirectional attention sees every token."]
    np.testing.assert_allclose(from_workdir.encode(texts, "x"), ev.load_encoder(model_dir).encode(texts, "x"),
                               atol=1e-5)


def test_bad_models_are_reported_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"random:tiny.*vocabulary \(512\).*151665"):
        ev.load_encoder("random:tiny")
    with pytest.raises(ValueError, match="seed"):
        ev.load_encoder("random:demo:x")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ev.load_encoder(str(tmp_path / "missing"))
    (tmp_path / "stage1" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="neither a training workdir.*stage1"):
        ev.load_encoder(str(tmp_path))
    with pytest.raises(SystemExit) as stop:  # the CLI: one line, exit 2 (test_cli_usage_errors_... below)
        evaluate_cli.main(["--model", "random:demo", "--tasks", "NoSuchTask", "--output", str(tmp_path / "x.json")])
    assert stop.value.code == 2


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "qzhou_jax.evaluate", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--compare" in result.stdout and "random:<preset>" in result.stdout


@pytest.mark.slow
def test_trained_workdir_and_random_baseline(tmp_path):
    """A real 2-step training run (configs/demo.py:stage1) evaluated against the untrained random:demo baseline."""
    import importlib.util

    from qzhou_jax.train import loop as train

    spec = importlib.util.spec_from_file_location("demo_config", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cfg = demo.get_config("stage1")
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every = 2, 1, 2
    cfg.export.at_end, cfg.plot = False, False
    train.run(cfg, str(tmp_path / "run"))
    rows = evaluate_cli.main(["--model", "random:demo", "--compare", str(tmp_path / "run"), "--tasks", "STSBenchmark,SciFact",
                    "--output", str(tmp_path / "r.json")] + COMMON)
    assert {r["model"] for r in rows} == {"random:demo", str(tmp_path / "run")}
    assert all(v is not None and np.isfinite(v) for v in _main_scores(rows).values())


@pytest.mark.slow
def test_briefly_trained_model_beats_its_untrained_self(tmp_path):
    """30 steps of SciFact retrieval (the demo's stage 1, from random init) lift SciFact nDCG@10 on the training
    queries above the very init the run started from (train.init_params, same seed)."""
    import importlib.util

    from qzhou_jax.train import loop as train
    from qzhou_jax.encode import Encoder

    spec = importlib.util.spec_from_file_location("demo_config", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cfg = demo.get_config("stage1")
    cfg.data.datasets = cfg.data.datasets[:1]  # SciFact only
    assert cfg.data.datasets[0]["name"] == "scifact"
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every, cfg.optim.warmup_steps = 30, 10, 30, 5
    cfg.eval.tasks, cfg.export.at_end, cfg.plot = (), False, False
    train.run(cfg, str(tmp_path / "run"))

    model_config = train.build_model_config(cfg)
    untrained = Encoder(train.init_params(cfg, model_config), model_config, load_tokenizer(), max_length=96,
                        batch_size=32)
    trained = ev.load_encoder(str(tmp_path / "run"), max_length=96, batch_size=32)
    scores = [_main_scores(ev.evaluate(e, ["SciFact"], split="train", max_examples=40))["SciFact"]
              for e in (untrained, trained)]
    assert scores[1] > scores[0] + 0.02, scores


def test_cli_usage_errors_are_one_line_naming_the_flag_or_path(tmp_path, capsys):
    def cli(*argv):
        with pytest.raises(SystemExit) as stop:
            evaluate_cli.main([*argv, "--output", str(tmp_path / "r.json")])
        return stop.value.code, capsys.readouterr().err

    assert cli("--model", "random:demo", "--tasks", "SciFact,NoSuchTask") == (
        2, f"error: --tasks SciFact,NoSuchTask: unknown task 'NoSuchTask'; local tasks: {', '.join(tasks.TASKS)}\n")
    status, err = cli("--model", "random:no_such_preset", "--tasks", "SciFact")
    assert status == 2 and err.startswith("error: random:no_such_preset: unknown model preset 'no_such_preset'")
    status, err = cli("--model", str(tmp_path / "nowhere"), "--tasks", "SciFact")
    assert status == 2 and err.startswith(f"error: {tmp_path}/nowhere: no such directory") and err.count("\n") == 1
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text(json.dumps(oracle_config()))
    status, err = cli("--model", str(tmp_path / "no_weights"), "--tasks", "SciFact")
    assert (status, err) == (2, f"error: {tmp_path}/no_weights: no model.safetensors or "
                                f"model.safetensors.index.json\n")
    assert not (tmp_path / "r.json").exists()


def oracle_config():
    """A Qwen2 config.json (tiny), for a directory that lacks the weights."""
    from qzhou_jax.model import ModelConfig

    return ModelConfig(vocab_size=151680, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2).to_hf()
