"""cli_errors: usage errors exit 2 and failed runs exit 1, each as one `error:` line naming what is wrong; --debug
shows the traceback; an unknown error (a bug) keeps it; every command has --debug."""
import errno
import importlib
import logging
import sys

import pytest

from qzhou_jax import cli_errors
from qzhou_jax.cli_errors import RunFailed, UsageError


@pytest.mark.parametrize("error,status", [
    (UsageError("--dim 9999: must be within 1..32"), 2),
    (RunFailed("3 of 5 items failed"), 1),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/config.json"), 2),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/full/run"), 1),
    (FileExistsError("/out: already holds a model"), 2),  # a message, no errno
    (ValueError("a bug"), None),
    (KeyError("a bug"), None),
])
def test_exit_status_by_kind(error, status):
    assert cli_errors.exit_status(error) == status


def test_project_errors_are_classified():
    from qzhou_jax.run.checkpoint import CheckpointSaveError
    from qzhou_jax.config import ConfigLoadError
    from qzhou_jax.train.config_check import ConfigError
    from qzhou_jax.data.checks import DatasetRefused
    from qzhou_jax.data.errors import DataError
    from qzhou_jax.data.prepared import DamagedShards
    from qzhou_jax.hf.convert import ConvertError
    from qzhou_jax.hf.load import CheckpointError
    from qzhou_jax.synthesis.client import AuthError
    from qzhou_jax.synthesis.run import UnusableAnswers
    from qzhou_jax.train.loop import NonFiniteError
    from qzhou_jax.train.workdir_lock import WorkdirBusyError

    for usage in (ConfigError("a.b", 1, "bad"), ConfigLoadError("x"), DataError("f:1", "bad"), DatasetRefused("x"),
                  DamagedShards("f", "x"), CheckpointError("no weights"), AuthError("401"), ConvertError("x.gguf")):
        assert cli_errors.exit_status(usage) == 2, usage
        assert isinstance(usage, ValueError)  # callers catching ValueError still do
    for failed in (CheckpointSaveError("x"), NonFiniteError("x"), WorkdirBusyError("x"), UnusableAnswers("x")):
        assert cli_errors.exit_status(failed) == 1, failed


def test_reported_prints_one_line_and_exits(capsys):
    with pytest.raises(SystemExit) as stop:
        with cli_errors.reported():
            raise UsageError("--out x already holds a model;\n  pass --overwrite")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --out x already holds a model; pass --overwrite\n"
    with pytest.raises(SystemExit) as stop:
        with cli_errors.reported():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/m/config.json")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: /m/config.json: No such file or directory\n"


def test_debug_and_unknown_errors_keep_the_traceback(capsys):
    with pytest.raises(UsageError):
        with cli_errors.reported(debug=True):
            raise UsageError("shown with its traceback")
    with pytest.raises(ZeroDivisionError):
        with cli_errors.reported():
            1 / 0
    assert capsys.readouterr().err == ""


def test_log_records_lose_their_tracebacks_unless_debugging():
    formatter = cli_errors._OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/3.tmp")
    except OSError:
        record = logging.LogRecord("orbax", logging.ERROR, __file__, 1, "background save %s failed", ("3",),
                                   sys.exc_info())
    line = formatter.format(record)
    assert line == "ERROR background save 3 failed (OSError: /ckpt/3.tmp: No space left on device)"
    assert record.exc_info is not None  # other handlers still get the whole record
    assert "Traceback" in logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize("module,argv", [
    ("qzhou_jax.cli.train", ["--help"]), ("qzhou_jax.cli.export", ["--help"]), ("qzhou_jax.cli.encode", ["--help"]),
    ("qzhou_jax.cli.evaluate", ["--help"]), ("qzhou_jax.cli.mine", ["--help"]), ("qzhou_jax.cli.plan", ["--help"]),
    ("qzhou_jax.cli.synthesize", ["paraphrase", "--help"]), ("qzhou_jax.cli.synthesize", ["merge", "--help"]),
    ("qzhou_jax.cli.prepare", ["--help"]), ("qzhou_jax.cli.inspect", ["--help"]),
    ("qzhou_jax.cli.convert", ["--help"]), ("qzhou_jax.cli.mteb_local", ["--help"]),
    ("qzhou_jax.cli.merge", ["--help"]),
])
def test_every_command_has_debug(module, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    assert stop.value.code == 0 and "--debug" in capsys.readouterr().out
