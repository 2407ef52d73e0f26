"""How every command ends when something is wrong: one line naming the file, flag or key, and an exit status.

    def main(argv=None):
        parser = argparse.ArgumentParser(...)
        cli_errors.add_debug_flag(parser)
        args = parser.parse_args(argv)
        cli_errors.setup_logging(args.debug)
        with cli_errors.reported(args.debug):
            ...

Exit status 2: bad usage -- the command line, the config, the input data or a path given is wrong (`UsageError`
and its kin: ConfigError, DataError, DatasetRefused, a missing or unwritable path). Exit status 1: the run itself
failed or produced less than asked (`RunFailed`: a failed checkpoint save, non-finite losses, items short in
synthesis, a full disk). Either way the command prints `error: <message>` on stderr, no traceback; `--debug` (or a
DEBUG log level) re-raises instead. Anything else is a bug, and its traceback is the report.

This module imports nothing of the project, so every module can derive its errors from these two classes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys

USAGE, FAILED = 2, 1


class UsageError(ValueError):
    """Bad usage (exit 2): the message names the flag, config key or file, and what is wrong with it."""


class RunFailed(RuntimeError):
    """A failed run (exit 1): the message says what failed and how much was done."""


# Errors of modules that keep their own base classes (modules other work owns): (module, class) -> exit status.
# Looked up in sys.modules, so checking never imports them (an error of a module that was never imported cannot
# have been raised).
FOREIGN = {("qzhou_jax.hf.load", "CheckpointError"): USAGE}

# OS errors that mean "that path is wrong" (usage) rather than "the machine failed" (full disk, I/O error).
_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS}
# The same kinds raised with a message only (no errno).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def exit_status(error: BaseException) -> int | None:
    """2 for usage errors, 1 for failed runs, None for anything else (a bug: keep its traceback)."""
    if isinstance(error, UsageError):
        return USAGE
    if isinstance(error, RunFailed):
        return FAILED
    for (module, name), status in FOREIGN.items():
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return status
    if isinstance(error, OSError):
        return USAGE if error.errno in _PATH_ERRNOS or isinstance(error, _PATH_ERRORS) else FAILED
    return None


def message(error: BaseException) -> str:
    """One line: the error's own text (OS errors as 'path: reason')."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG level and show tracebacks instead of one-line errors")


def debugging(debug: bool = False) -> bool:
    return bool(debug) or logging.getLogger().isEnabledFor(logging.DEBUG)


NOISY_LOGGERS = ("absl", "orbax", "jax._src")


class _OneLineFormatter(logging.Formatter):
    """Log records without tracebacks: a library's `log.exception(...)` (Orbax's failed background save, for one)
    would otherwise print one above the one-line error. The exception's type and text stay on the line."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line = super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                                         "stack_info": None}))
            return f"{line} ({type(error).__name__}: {message(error)[:300]})"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def setup_logging(debug: bool = False, *, level: int = logging.INFO, stream=None,
                  fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
    """logging.basicConfig at `level` (DEBUG with --debug). Without --debug, the handler it installs prints no
    tracebacks. A bare stderr handler is replaced: absl's logging calls logging.basicConfig() the first time it
    logs (Orbax does while being imported), which left a plain WARNING handler that our INFO lines never passed.
    Handlers of any other kind (pytest's, an embedding program's) are left as they are."""
    root = logging.getLogger()
    implicit = bool(root.handlers) and all(type(h) is logging.StreamHandler for h in root.handlers)
    fresh = implicit or not root.handlers
    logging.basicConfig(level=logging.DEBUG if debug else level, format=fmt, stream=stream, force=implicit)
    if fresh and not debug:  # Orbax, Grain (through absl) and JAX's INFO lines would drown ours
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(max(logging.WARNING, level))
    if fresh and root.handlers and not debugging(debug):
        root.handlers[0].setFormatter(_OneLineFormatter(fmt))
    if not debugging(debug):
        sys.unraisablehook = _one_line_unraisable


_UNRAISABLE_SEEN: set = set()


def _one_line_unraisable(unraisable) -> None:
    """Errors raised where nothing can catch them (a callback in a library's thread) print one line, once per
    kind: after a failed checkpoint write, TensorStore's callbacks into Orbax's closed event loops raised
    hundreds of identical tracebacks ("Event loop is closed") around the one error that matters."""
    what = f"{type(unraisable.exc_value).__name__}: {message(unraisable.exc_value)}" \
        if unraisable.exc_value is not None else str(unraisable.err_msg)
    if what not in _UNRAISABLE_SEEN:
        _UNRAISABLE_SEEN.add(what)
        print(f"WARNING: ignored in a background thread: {what[:300]} (repeats not shown; --debug shows them)",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def reported(debug: bool = False):
    """Turns a known error into `error: <one line>` on stderr and SystemExit(2 or 1); --debug re-raises it."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - classified below; unknown errors propagate unchanged
        status = exit_status(error)
        if status is None or debugging(debug):
            raise
        print(f"error: {message(error)}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None
