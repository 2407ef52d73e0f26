"""Two processes (jax.distributed, 4 fake CPU devices each, Gloo) mine exactly what one 8-device process mines;
each process encodes its own half of the chunks into the shared cache."""
import json
import os
import socket
import subprocess
import sys

import pytest

from qzhou_jax.cli import mine as mine_cli
from tests.mining.conftest import INSTRUCTION

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(model_dir, data, out, cache):
    return ["--model", model_dir, "--input", data["input"], "--corpus", data["corpus"], "--output", str(out),
            "--cache", str(cache), "--instruction", INSTRUCTION, "--batch-size", "16", "--max-length", "64",
            "--encode-chunk", "32", "--corpus-chunk", "16", "--query-batch", "16", "--max-score-ratio", "0.999",
            "--seed", "4"]


def test_two_processes_equal_one(tmp_path, model_dir, data, capsys):
    out, port = tmp_path / "multi.jsonl", _free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), JAX_DEFAULT_MATMUL_PRECISION="highest",
                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
        procs.append(subprocess.Popen([sys.executable, "-m", "qzhou_jax.mine", *_args(model_dir, data, out,
                                                                                      tmp_path / "cache"),
                                       "--distributed"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-process mining timed out")
        results.append((p.returncode, stdout, stderr))
    # Most rows are short of negatives here (a random model, --max-score-ratio 0.999): each run exits 1 after
    # writing its rows (exit codes tell the truth), and the processes and the single run must agree on that too.
    codes = [code for code, _, _ in results]
    for code, stdout, stderr in results:
        assert code in (0, 1) and code == codes[0], stderr[-3000:]
    stats = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    assert all(s["processes"] == 2 and s["devices"] == 8 for s in stats)
    assert all(s["encoded_chunks"] > 0 for s in stats)  # each host encoded its own share

    single = tmp_path / "single.jsonl"
    try:
        mine_cli.main(_args(model_dir, data, single, tmp_path / "cache1"))
        single_code = 0
    except SystemExit as e:
        single_code = e.code
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert single_code == codes[0]
    assert one["devices"] == 8 and one["processes"] == 1
    assert stats[0]["encoded_chunks"] + stats[1]["encoded_chunks"] == one["encoded_chunks"]
    assert out.read_text() == single.read_text()
