"""The export CLI's usage errors: one line naming the flag (`--overwrite`, not the Python argument), exit 2, and
nothing restored or written first."""
import pytest

from qzhou_jax.cli import export
from qzhou_jax.run import checkpoint
from tests.cli_run import run_main


def _cli(argv, capsys):
    status, _, err = run_main(export.main, argv, capsys)
    return status, err


def test_an_existing_export_is_kept_unless_overwrite_is_passed(tmp_path, capsys, monkeypatch):
    restored = []
    monkeypatch.setattr(checkpoint, "restore_params", lambda *a, **k: restored.append(a))
    (tmp_path / "wd" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"weights of an earlier export")
    status, err = _cli(["--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "out")], capsys)
    assert (status, err) == (2, f"error: --out {tmp_path}/out already holds a model (config.json or weights); "
                                f"pass --overwrite to replace it\n")
    assert restored == [] and (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights of an earlier export"


def test_a_source_without_config_or_checkpoints_is_named(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    status, err = _cli(["--params-from-hf", str(tmp_path / "src"), "--out", str(tmp_path / "out")], capsys)
    assert (status, err) == (2, f"error: --params-from-hf {tmp_path}/src: no config.json there, so it is not an HF "
                                f"Qwen2 directory or a qzhou-jax export\n")
    status, err = _cli(["--workdir", str(tmp_path / "src"), "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and err.startswith(f"error: {tmp_path}/src: not a training workdir") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):  # --debug: the exception and its traceback
        export.main(["--workdir", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--debug"])
