"""Checkpoints: a killed run resumes to exactly the uninterrupted result; a corrupt checkpoint is set aside."""
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from qzhou_jax.run import checkpoint
from qzhou_jax.train import loop as train
from qzhou_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--config.train.log_every=1", "--config.checkpoint.every=5", "--config.checkpoint.keep=3",
          "--config.export.at_end=False", "--config.plot=False", "--config.eval.tasks=()"]


def _cli(workdir, *extra, crash_after_step=0):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               QZ_CRASH_AFTER_STEP=str(crash_after_step))
    cmd = [sys.executable, "-m", "tests.fault_train", "--config=configs/demo.py:stage1", f"--workdir={workdir}",
           *COMMON, "--config.mesh.shape=(2,2,2)", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir))}


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    steps = ["--config.train.steps=10", "--config.checkpoint.every=3"]
    done = _cli(straight, *steps)
    assert done.returncode == 0, done.stderr[-3000:]
    crash = _cli(killed, *steps, crash_after_step=8)
    assert crash.returncode == 17, crash.stderr[-3000:]  # died without any shutdown after step 8
    assert sorted(checkpoint_steps(killed)) == [3, 6]
    resumed = _cli(killed, *steps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint step 6" in resumed.stdout

    a, b = _losses(straight), _losses(killed)
    assert sorted(b) == list(range(1, 11))  # rows 7-8 of the crashed run were replaced, not duplicated
    np.testing.assert_array_equal([a[s] for s in range(1, 11)], [b[s] for s in range(1, 11)])
    pa, _, _ = checkpoint.restore_params(str(straight))
    pb, _, _ = checkpoint.restore_params(str(killed))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)


def checkpoint_steps(workdir):
    return [int(d) for d in os.listdir(checkpoint.checkpoint_dir(str(workdir))) if d.isdigit()]


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    overrides = COMMON + ["--config.checkpoint.async_save=False"]
    train.run(train.load_config("configs/demo.py:stage1", overrides + ["--config.train.steps=10"]), str(tmp_path))
    assert sorted(checkpoint_steps(tmp_path)) == [5, 10]
    # Damage step 10: truncate every array data file of its state.
    state_dir = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "10", "state")
    damaged = 0
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)
                damaged += 1
    assert damaged
    capsys.readouterr()
    summary = train.run(train.load_config("configs/demo.py:stage1", overrides + ["--config.train.steps=12"]),
                        str(tmp_path))
    out = capsys.readouterr().out
    assert "checkpoint step 10" in out and "unreadable" in out and "moved unreadable checkpoint step 10" in out
    assert "resuming from checkpoint step 5" in out
    assert summary["step"] == 12
    assert any(d.startswith("10.corrupt") for d in os.listdir(checkpoint.checkpoint_dir(str(tmp_path))))
    # Steps 6..12 were trained again from step 5 and logged once each.
    assert sorted(_losses(tmp_path)) == list(range(1, 13))


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    import signal
    import time
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "qzhou_jax.train", "--config=configs/demo.py:stage1", f"--workdir={tmp_path}",
           *COMMON, "--config.train.steps=100000", "--config.checkpoint.every=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 600
    for line in proc.stdout:  # wait until training runs, then preempt
        lines.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines[-20:])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: saved checkpoint at step" in out
    saved = checkpoint_steps(tmp_path)
    assert saved and max(saved) >= 2


def test_unreadable_checkpoints_are_never_discarded_silently(tmp_path):
    overrides = COMMON + ["--config.checkpoint.async_save=False"]
    train.run(train.load_config("configs/demo.py:stage1", overrides + ["--config.train.steps=5"]), str(tmp_path))
    # A host-count change: the step-5 iterator state saved by 1 process, as 2 processes would have saved it.
    data_iter = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "5", "data_iter")
    state = open(os.path.join(data_iter, "process_0-of-1.json")).read()
    os.remove(os.path.join(data_iter, "process_0-of-1.json"))
    for i in range(2):
        with open(os.path.join(data_iter, f"process_{i}-of-2.json"), "w") as f:
            f.write(state)
    summary = train.run(train.load_config("configs/demo.py:stage1", overrides + ["--config.train.steps=6"]),
                        str(tmp_path))
    assert summary["step"] == 6 and sorted(_losses(tmp_path)) == list(range(1, 7))
    # Now make every checkpoint unreadable: the run refuses to start over and moves nothing.
    for step in checkpoint_steps(tmp_path):
        meta = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), str(step), "state")
        for root, _, files in os.walk(meta):
            for name in files:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(0)
    before = sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path))))
    with pytest.raises(RuntimeError, match="none of the checkpoints"):
        train.run(train.load_config("configs/demo.py:stage1", overrides + ["--config.train.steps=8"]), str(tmp_path))
    assert sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path)))) == before


from tests.trained_workdir import copy_of, demo_config, trained_workdir  # noqa: E402,F401


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _flipped(buf: bytes, at: int, count: int) -> bytes:
    return buf[:at] + bytes(b ^ 0xFF for b in buf[at:at + count]) + buf[at + count:]


def _silent_flip_offset(data: bytes, count: int) -> int:
    """An offset in `data` where `count` flipped bytes leave its zstd frame decodable (to other values)."""
    import zstandard

    starts = [m.start() for m in re.finditer(re.escape(ZSTD_MAGIC), data)]
    frames = sorted(zip(starts, starts[1:] + [len(data)]), key=lambda f: f[0] - f[1])  # largest first
    decoder = zstandard.ZstdDecompressor()
    for start, end in frames:
        frame = data[start:end]
        try:
            before = decoder.decompress(frame, max_output_size=1 << 28)
        except zstandard.ZstdError:  # not a frame: the magic number occurred inside other bytes
            continue
        for at in range(len(frame) // 2, len(frame) - count, max(count, len(frame) // 16)):
            try:
                after = decoder.decompress(_flipped(frame, at, count), max_output_size=1 << 28)
            except zstandard.ZstdError:
                continue
            if len(after) == len(before) and after != before:
                return start + at
    raise AssertionError("no place where flipped bytes still decode")


def _flip_bytes_in_largest_file(step_dir, count=64):
    """Bit rot that still decodes: `count` bytes flipped in the state's largest file, inside one of the zstd frames
    Orbax stores array chunks as, where the frame still decompresses (to other values). Flipping blindly at the
    middle sometimes hit a header or a checked stream, which fails loudly instead (another path, tested by
    test_corrupt_latest_checkpoint_falls_back), so this test failed now and then."""
    files = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(step_dir, "state")) for n in names]
    largest = max(files, key=os.path.getsize)
    data = open(largest, "rb").read()
    at = _silent_flip_offset(data, count) if ZSTD_MAGIC in data else len(data) // 2
    with open(largest, "wb") as f:
        f.write(_flipped(data, at, count))


def test_silently_flipped_bytes_are_caught_by_the_fingerprint(trained_workdir, tmp_path, capsys):
    workdir = copy_of(trained_workdir, tmp_path)
    _flip_bytes_in_largest_file(os.path.join(checkpoint.checkpoint_dir(str(workdir)), "4"))
    capsys.readouterr()
    params, _, meta = checkpoint.restore_params(str(workdir))  # export / stage hand-off: the previous one
    out = capsys.readouterr().out
    assert meta["step"] == 2 and "do not match the fingerprint" in out, (meta, out[-2000:])
    summary = train.run(demo_config("--config.train.steps=4"), str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint step 4" in out and "do not match the fingerprint" in out, out[-3000:]
    assert "resuming from checkpoint step 2" in out, out[-3000:]
    assert summary["step"] == 4
    assert any(d.startswith("4.corrupt") for d in os.listdir(checkpoint.checkpoint_dir(str(workdir))))
    # Steps 3-4 retrained from step 2 reproduce the undamaged run exactly.
    good, _, _ = checkpoint.restore_params(str(trained_workdir), step=4)
    again, _, _ = checkpoint.restore_params(str(workdir), step=4)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), good, again)


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size): a filesystem of that size (e.g. "120m") under tmp_path, unmounted afterwards."""
    mounts = []

    def mount(size):
        path = tmp_path / f"tmpfs{len(mounts)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
            pytest.skip("cannot mount a tmpfs here (not root?)")
        mounts.append(path)
        return path
    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)])


def test_a_failed_background_save_is_named_with_its_step_and_path_once_it_fails_and_removed(tmp_path, tmpfs):
    """Orbax's finalize thread swallows a failed background write (check_for_errors then sees nothing) and
    re-raises it from the next save's wait only; the loop's per-step check must report it itself."""
    import collections

    import grain
    import jax.numpy as jnp

    disk = tmpfs("2m")
    manager = checkpoint.make_manager(str(disk / "run"), every=1, keep=3, async_save=True)
    State = collections.namedtuple("State", "step params opt_state")
    state = State(jnp.array(1), {"w": jax.random.normal(jax.random.key(0), (1024, 1024))}, {"m": jnp.zeros(3)})
    data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
    checkpoint.save(manager, 7, state, data_iter, {}, force=True)  # 4 MiB of random floats: no room
    for _ in range(600):  # the training loop calls this once per step
        try:
            checkpoint.check_background_save(manager)
        except checkpoint.CheckpointSaveError as err:
            message = str(err)
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the failed save was never reported")
    directory = checkpoint.checkpoint_dir(str(disk / "run"))
    assert message.startswith(f"saving checkpoint step 7 to {directory}/7.orbax-checkpoint-tmp")
    assert "No space left on device" in message and f"removed the partial {directory}/7.orbax" in message
    assert os.listdir(directory) == []  # the space the partial save held is free again
    assert "2.0 MiB free of 2.0 MiB" in message


@pytest.mark.slow
def test_full_disk_names_the_failed_save_at_the_next_step_removes_it_and_keeps_what_was_saved(tmpfs):
    workdir = tmpfs("120m") / "run"  # one demo checkpoint (76 MiB) fits, a second does not
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "qzhou_jax.train", "--config=configs/demo.py:stage1",
                           f"--workdir={workdir}", *COMMON, "--config.train.steps=12", "--config.checkpoint.every=3",
                           "--config.checkpoint.async_save=True"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    directory = checkpoint.checkpoint_dir(str(workdir))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"error: saving checkpoint step 6 to {directory}/6.orbax-checkpoint-tmp")
    assert "No space left on device" in errors[0] and "MiB free of 120.0 MiB" in errors[0]
    assert "removed the partial" in errors[0] and "Traceback" not in done.stdout + done.stderr
    last_step = max(r["step"] for r in read_metrics(str(workdir)))
    assert 6 <= last_step < 9, last_step  # noticed at the steps after it failed, before the step-9 save
    assert sorted(os.listdir(directory)) == ["3"]  # nothing partial left; the step-3 checkpoint intact
    params, _, meta = checkpoint.restore_params(str(workdir))
    assert meta["step"] == 3
