"""The backend choice made on import: CPU where no accelerator exists, without libtpu's TPU probe (issue 23)."""
import os
import subprocess
import sys

from qzhou_jax import backend


def test_cpu_chosen_only_without_accelerator_or_explicit_choice(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("JAX_FORCE_TPU_INIT", raising=False)
    monkeypatch.setattr(backend, "_has_accelerator", lambda: True)
    backend.cpu_without_accelerator()
    assert "JAX_PLATFORMS" not in os.environ
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    monkeypatch.setattr(backend, "_has_accelerator", lambda: False)
    backend.cpu_without_accelerator()
    assert os.environ["JAX_PLATFORMS"] == "tpu"  # an explicit choice wins


def test_a_command_on_this_cpu_host_prints_no_tpu_probe():
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT")}
    if backend._has_accelerator():
        return  # an accelerator host: JAX's own choice stands
    out = subprocess.run([sys.executable, "-c", "import qzhou_jax.model, jax; print(jax.devices()[0].platform)"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "cpu"
    assert "TPU_WORKER_HOSTNAMES" not in out.stderr and "INVALID_ARGUMENT" not in out.stderr
