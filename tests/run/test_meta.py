"""What a run records for export and evaluation (run_meta.py), end to end through a real training run: a run trained
with `data.prompt_sep=""` exports and evaluates with "", with the tokenizer it recorded; a corrupt newest checkpoint
exports the previous step and says so; a multi-stage workdir exports its last stage."""
import importlib.util
import json
import os
import shutil

import pytest

from qzhou_jax.cli import export as export_cli
from qzhou_jax.run import meta as run_meta
from qzhou_jax.train import loop as train
from qzhou_jax.encode import Encoder
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.hf import export as hf_export
from qzhou_jax.tokenizer import PromptConfig


def demo_stage1():
    spec = importlib.util.spec_from_file_location("demo_config", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.get_config("stage1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps of the demo's stage 1 with prompt_sep="", checkpoints at steps 2 and 4, exported at the end."""
    cfg = demo_stage1()
    cfg.data.prompt_sep = ""
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every, cfg.checkpoint.keep = 4, 2, 2, 3
    cfg.eval.tasks, cfg.plot = (), False
    root = tmp_path_factory.mktemp("multi")
    workdir = root / "stage1"
    summary = train.run(cfg, str(workdir))
    return cfg, root, workdir, summary


def test_metadata_helpers_read_old_and_new_checkpoints():
    cfg = {"data": {"prompt_sep": ""}, "model": {"tokenizer": "", "hf_dir": "/hf"}}
    meta = run_meta.run_metadata(cfg)
    assert meta == {"prompt": {"query_template": PromptConfig.query_template, "sep": ""}, "tokenizer": "/hf"}
    assert run_meta.prompt_from_meta(meta).sep == "" and run_meta.tokenizer_from_meta(meta) == "/hf"
    old = {"config": cfg}  # written before these keys existed: derived from the run config
    assert run_meta.prompt_from_meta(old).sep == "" and run_meta.tokenizer_from_meta(old) == "/hf"
    assert run_meta.prompt_from_meta({"config": {"data": {}}}).sep == " "  # DataConfig's default


@pytest.mark.slow
def test_empty_prompt_sep_survives_export_and_evaluation(trained, tmp_path, monkeypatch):
    cfg, root, workdir, summary = trained
    # the export written at the end of training
    end_export = summary["export_dir"]
    assert json.loads(open(os.path.join(end_export, hf_export.PROMPT_FILE)).read())["sep"] == ""
    st = json.loads(open(os.path.join(end_export, "config_sentence_transformers.json")).read())
    assert st["prompts"]["query"] == f"Instruct: {hf_export.DEFAULT_QUERY_INSTRUCTION}\nQuery:"  # no space
    assert Encoder.from_pretrained(end_export).prompt.sep == ""
    # evaluate on the workdir
    encoder = ev.load_encoder(str(workdir))
    assert encoder.prompt.sep == ""
    assert encoder.token_ids(["cat"], "Find")[0] == encoder.tokenizer("Instruct: Find\nQuery:cat",
                                                                       add_special_tokens=False)["input_ids"]
    # the evaluator built during training encodes with the run's prompt
    seen = []
    import qzhou_jax.encode as encode_module

    class Recording(Encoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.prompt)

    monkeypatch.setattr(encode_module, "Encoder", Recording)
    eval_cfg = cfg.copy_and_resolve_references()
    eval_cfg.eval.tasks, eval_cfg.eval.max_examples = ("STSBenchmark",), 8
    model_config = train.build_model_config(eval_cfg)
    evaluator = train._make_evaluator(eval_cfg, model_config, encoder.tokenizer)
    evaluator(encoder.params)
    assert [p.sep for p in seen] == [""]


@pytest.mark.slow
def test_export_workdir_records_step_and_skips_a_corrupt_newest_checkpoint(trained, tmp_path, caplog):
    _, root, workdir, _ = trained
    bad = tmp_path / "copy"
    shutil.copytree(workdir, bad)
    state = bad / "checkpoints" / "4" / "state"
    for dirpath, _, files in os.walk(state):  # every data file of the newest state cut to nothing
        for name in files:
            if not name.endswith(".json") and "metadata" not in name:
                open(os.path.join(dirpath, name), "w").close()
    export_cli.main(["--workdir", str(bad), "--out", str(tmp_path / "out"), "--dtype", "float32"])
    record = json.loads((tmp_path / "out" / hf_export.SOURCE_FILE).read_text())
    assert record["step"] == 2 and record["skipped_unreadable_steps"] == [4]
    assert "exporting step 2" in caplog.text
    assert json.loads((tmp_path / "out" / hf_export.PROMPT_FILE).read_text())["sep"] == ""


@pytest.mark.slow
def test_export_of_a_multi_stage_workdir_takes_the_last_stage(trained, tmp_path):
    _, root, workdir, _ = trained
    older = root / "stage0"
    if not older.exists():
        shutil.copytree(workdir, older)
    for step in run_meta.checkpoint_steps(str(older)):
        os.utime(older / "checkpoints" / str(step), (1, 1))  # written long before stage1's
    assert run_meta.resolve_workdir(str(root)) == str(workdir)
    export_cli.main(["--workdir", str(root), "--out", str(tmp_path / "out"), "--dtype", "float32"])
    record = json.loads((tmp_path / "out" / hf_export.SOURCE_FILE).read_text())
    assert record["workdir"] == str(workdir) and record["step"] == 4
    with pytest.raises(FileNotFoundError, match="multi-stage"):
        run_meta.resolve_workdir(str(tmp_path / "out"))


def test_a_workdir_keeps_its_tokenizer_and_reads_it_first(trained, tmp_path):
    _, _, workdir, _ = trained
    saved = os.path.join(str(workdir), run_meta.TOKENIZER_DIR)
    assert os.path.isfile(os.path.join(saved, "tokenizer.json"))  # written by the run
    assert run_meta.tokenizer_from_meta({"tokenizer": "/gone"}, str(workdir)) == saved
    assert run_meta.tokenizer_from_meta({"tokenizer": "/gone"}, str(tmp_path)) == "/gone"  # no copy: the record
