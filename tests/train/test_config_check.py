"""Config mistakes are one line naming the field, before anything compiles; resuming lists changed keys and
refuses a changed state structure, while a changed mesh resumes."""
import os
import subprocess
import sys

import pytest

from qzhou_jax.run import checkpoint
from qzhou_jax.train import config_check
from qzhou_jax.train import loop as train
from qzhou_jax.config import load_config
from tests.trained_workdir import copy_of, demo_config, trained_workdir  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("override,field", [
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"), ("optim.lr=0.0", "optim.lr"),
    ("optim.lr=-0.001", "optim.lr"), ("optim.grad_accum_steps=0", "optim.grad_accum_steps"),
    ("checkpoint.every=0", "checkpoint.every"), ("train.log_every=0", "train.log_every"),
    ("data.batch_size.retrieval=12", "data.batch_size.retrieval"),  # 8 batch devices on (-1, 1, 1)
    ("optim.grad_accum_steps=7", "train.steps"),  # 60 steps are not whole updates of 7
    ("data.max_skipped_fraction=1.5", "data.max_skipped_fraction"),
    ("mesh.shape=(3,-1,1)", "mesh.shape"),
    # dtypes, enumerations, ranges and paths: checked here, not after the data has loaded
    ("model.dtype=float33", "model.dtype"), ("model.param_dtype=int8", "model.param_dtype"),
    ("model.attention=sideways", "model.attention"), ("model.pooling=max", "model.pooling"),
    ("model.remat_policy=most", "model.remat_policy"), ("model.attention_impl=flash", "model.attention_impl"),
    ("model.preset=qwen9", "model.preset"), ("optim.decay=step", "optim.decay"), ("optim.b2=1.0", "optim.b2"),
    ("optim.final_lr_ratio=2.0", "optim.final_lr_ratio"), ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("export.dtype=float16", "export.dtype"), ("data.verify=sometimes", "data.verify"),
    ("eval.tasks=('SciFact','NoSuchTask')", "eval.tasks"), ("model.hf_dir=/no/such/model", "model.hf_dir"),
    ("model.tokenizer=/no/such/tokenizer", "model.tokenizer"), ("init_from=/no/such/run", "init_from"),
])
def test_each_mistake_names_its_field(override, field):
    cfg = load_config("configs/demo.py:stage1", [f"--config.{override}"])
    with pytest.raises(config_check.ConfigError) as err:
        config_check.check(cfg, device_count=8)
    assert str(err.value).startswith(f"config.{field} = ") and "\n" not in str(err.value)


def test_data_paths_are_checked_naming_the_dataset_entry(tmp_path):
    (tmp_path / "model").mkdir()  # a directory without config.json is no model
    cfg = load_config("configs/demo.py:stage1", [f"--config.model.hf_dir={tmp_path}/model"])
    with pytest.raises(config_check.ConfigError, match=r"^config.model.hf_dir = .*: not an HF model directory"):
        config_check.check(cfg, device_count=8)
    for source, message in ((f"jsonl:{tmp_path}/gone.jsonl", "no such file"),
                            (f"beir:{tmp_path}/gone", "no such directory"),
                            (f"prepared:{tmp_path}/model", "no manifest.json there: prepare it first")):
        cfg = load_config("configs/demo.py:stage1")
        cfg.data.datasets = list(cfg.data.datasets) + [dict(name="extra", source=source, task="retrieval")]
        with pytest.raises(config_check.ConfigError) as err:
            config_check.check(cfg, device_count=8)
        index = len(cfg.data.datasets) - 1
        assert str(err.value).startswith(f"config.data.datasets[{index}].source = {source!r}: {message}")
    cfg = load_config("configs/demo.py:stage1")
    cfg.data.datasets = [dict(cfg.data.datasets[0], split="validation")]
    with pytest.raises(config_check.ConfigError, match=r"^config.data.datasets\[0\].split = 'validation': shared:"):
        config_check.check(cfg, device_count=8)


def test_the_mining_model_is_checked_before_any_stage_trains(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "miner" / "checkpoints").mkdir(parents=True)  # a training workdir
    for model, message in (("base", "'base' mines with model.hf_dir, which is not set"),
                           (f"{tmp_path}/plain", "neither a training workdir"), ("/no/miner", "no such directory")):
        cfg = load_config("configs/demo.py", ["--config.stages.stage2.mine.enabled=True",
                                              f"--config.stages.stage2.mine.model={model}"])
        with pytest.raises(config_check.ConfigError, match=rf"^config.stages.stage2.mine.model = .*: {message}"):
            config_check.check(cfg, device_count=8)
    config_check.check(load_config("configs/demo.py", ["--config.stages.stage2.mine.enabled=True",
                                                       f"--config.stages.stage2.mine.model={tmp_path}/miner"]),
                       device_count=8)


def test_value_lists_agree_with_their_owners():
    from qzhou_jax.train import optim
    from qzhou_jax.hf.export import EXPORT_DTYPES
    from qzhou_jax.mining.stages import RULES

    assert set(config_check.EXPORT_DTYPES) == set(EXPORT_DTYPES)
    for decay in config_check.DECAYS:
        optim.learning_rate_schedule(1.0, 10, 2, decay)
    with pytest.raises(ValueError):
        optim.learning_rate_schedule(1.0, 10, 2, "step")
    cfg = load_config("configs/demo.py", ["--config.stages.stage2.mine.enabled=True",
                                          "--config.stages.stage2.mine.rule=margin"])
    with pytest.raises(config_check.ConfigError, match=r"^config.stages.stage2.mine.rule = 'margin'"):
        config_check.check(cfg, device_count=8)
    assert set(RULES) == {"none", "relative_margin", "max_score_ratio"}


def test_batch_not_divisible_by_hosts():
    cfg = load_config("configs/demo.py:stage1", ["--config.mesh.shape=(2,1,-1)"])  # 2 batch devices
    config_check.check(cfg, device_count=6, process_count=2)
    with pytest.raises(config_check.ConfigError, match=r"data.batch_size.retrieval = 16: .* 3 hosts"):
        config_check.check(cfg, device_count=6, process_count=3)


def test_a_stage_2_mistake_stops_the_run_before_stage_1_trains(tmp_path):
    cfg = load_config("configs/demo.py", ["--config.stages.stage2.data.batch_size.pair_score=30"])
    with pytest.raises(config_check.ConfigError, match=r"^config.stages.stage2.data.batch_size.pair_score = 30"):
        train.run(cfg, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_stage2_config_needs_init_from(tmp_path):
    with pytest.raises(config_check.ConfigError, match="init_from"):
        config_check.check(load_config("configs/stage2.py", []), device_count=8)
    config_check.check(load_config("configs/stage2.py", ["--config.init_from=base"]), device_count=8)
    (tmp_path / "stage1" / "checkpoints").mkdir(parents=True)  # a stage-1 workdir
    config_check.check(load_config("configs/stage2.py", [f"--config.init_from={tmp_path}/stage1"]), device_count=8)
    with pytest.raises(config_check.ConfigError, match=r"^config.init_from = '/runs/stage1': no such directory"):
        config_check.check(load_config("configs/stage2.py", ["--config.init_from=/runs/stage1"]), device_count=8)


def test_keep_best_needs_evaluations_at_checkpoints():
    cfg = load_config("configs/demo.py:stage1", ["--config.checkpoint.keep_best=True", "--config.checkpoint.every=20",
                                                 "--config.checkpoint.best_metric=eval/SciFact/main_score"])
    with pytest.raises(config_check.ConfigError, match=r"^config.eval.every = 30: must be a multiple"):
        config_check.check(cfg, device_count=8)


@pytest.mark.parametrize("overrides,error", [
    ("optim.lr=0", "error: config.optim.lr = 0.0: must be a positive number"),
    ("model.dtype=float33", "error: config.model.dtype = 'float33': must be one of float32, bfloat16, float16"),
    ("optim.decay=step", "error: config.optim.decay = 'step': must be one of linear, cosine, constant"),
    ("mine.enabled=True mine.model=/no/miner", "error: config.mine.model = '/no/miner': no such directory"),
])
def test_cli_prints_one_line_and_compiles_nothing(tmp_path, overrides, error):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "qzhou_jax.train", "--config=configs/demo.py:stage1",
                           f"--workdir={tmp_path}", *(f"--config.{o}" for o in overrides.split())], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == error
    assert "Traceback" not in done.stderr + done.stdout
    assert not os.listdir(tmp_path)


def test_resume_refuses_a_changed_optimizer_structure(trained_workdir, tmp_path):
    workdir = copy_of(trained_workdir, tmp_path)
    before = sorted(os.listdir(checkpoint.checkpoint_dir(str(workdir))))
    with pytest.raises(config_check.ConfigError, match=r"^config.optim.grad_clip = 'changed': cannot resume"):
        train.run(demo_config("--config.train.steps=6", "--config.optim.grad_clip=0"), str(workdir))
    assert sorted(os.listdir(checkpoint.checkpoint_dir(str(workdir)))) == before  # nothing moved aside


def test_resume_on_another_mesh_lists_the_changes(trained_workdir, tmp_path, capsys):
    workdir = copy_of(trained_workdir, tmp_path)
    capsys.readouterr()
    summary = train.run(demo_config("--config.train.steps=5", "--config.mesh.shape=(2,2,2)"), str(workdir))
    out = capsys.readouterr().out
    assert "resuming with 2 changed config key(s)" in out and "mesh.shape: [-1, 1, 1] -> [2, 2, 2]" in out
    assert "resuming from checkpoint step 4" in out and summary["step"] == 5


@pytest.mark.parametrize("override,field", [
    ("model.trainable=top:0", "model.trainable"), ("model.trainable=bottom:2", "model.trainable"),
    ("model.lora.rank=-1", "model.lora.rank"),
    ("model.lora.targets=('q_proj','lm_head')", "model.lora.targets"),
    ("model.lora.dropout=1.0", "model.lora.dropout"), ("model.lora.alpha=0.0", "model.lora.alpha"),
    ("mine.every=-3", "mine.every"), ("mine.datasets=('nope',)", "mine.datasets"),
])
def test_efficient_finetuning_and_refresh_mistakes_name_their_field(override, field):
    extra = ["--config.model.lora.rank=4"] if override.startswith("model.lora.") and "rank" not in override else []
    extra += ["--config.mine.every=5"] if override.startswith("mine.datasets") else []
    cfg = load_config("configs/demo.py:stage1", [f"--config.{override}", *extra])
    with pytest.raises(config_check.ConfigError) as err:
        config_check.check(cfg, device_count=8)
    assert str(err.value).startswith(f"config.{field} = ") and "\n" not in str(err.value)


def test_lora_excludes_partial_and_refresh_runs_on_one_host():
    ok = load_config("configs/demo.py:stage1", ["--config.model.lora.rank=4", "--config.mine.every=5"])
    config_check.check(ok, device_count=8)
    both = load_config("configs/demo.py:stage1", ["--config.model.lora.rank=4", "--config.model.trainable=top:1"])
    with pytest.raises(config_check.ConfigError, match="model.trainable.*LoRA"):
        config_check.check(both, device_count=8)
    with pytest.raises(config_check.ConfigError, match="mine.every.*one host"):
        config_check.check(ok, device_count=8, process_count=2)


def test_merge_stage_mistakes_name_their_field():
    def staged(**merge):
        cfg = load_config("configs/demo.py")
        with cfg.unlocked():
            soup = cfg.stages.stage2.copy_and_resolve_references()
            soup.merge.enabled = True
            for key, value in merge.items():
                soup.merge[key] = value
            cfg.stages.stage3 = soup
        return cfg
    config_check.check(staged(models=("stage1", "stage2")), device_count=8)
    for merge, field in ((dict(models=("stage1",)), "merge.models"),
                         (dict(models=("stage1", "stage4")), "merge.models"),  # not an earlier stage
                         (dict(models=("stage1", "stage2"), method="dare"), "merge.method"),
                         (dict(models=("stage1", "stage2"), weights=(1.0,)), "merge.weights"),
                         (dict(models=("stage1", "stage2"), method="ties"), "merge.base")):
        with pytest.raises(config_check.ConfigError) as err:
            config_check.check(staged(**merge), device_count=8)
        assert str(err.value).startswith(f"config.stages.stage3.{field} = "), merge
    with pytest.raises(config_check.ConfigError, match="merge.enabled.*one host"):
        config_check.check(staged(models=("stage1", "stage2")), device_count=8, process_count=2)
    single = load_config("configs/demo.py:stage1", ["--config.merge.enabled=True"])
    with pytest.raises(config_check.ConfigError, match="python -m qzhou_jax.merge"):
        config_check.check(single, device_count=8)
