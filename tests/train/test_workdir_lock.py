"""One run per workdir: a live holder refuses a second run by pid and host; a dead one's lock is taken over."""
import os
import signal
import subprocess
import sys

import pytest

from qzhou_jax.train import loop as train
from qzhou_jax.train.workdir_lock import WorkdirBusyError, WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD = "import sys, time; from qzhou_jax.train.workdir_lock import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_live_run_is_refused_and_dead_lock_taken_over(tmp_path, capsys):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError, match=rf"in use by another run \(pid {holder.pid} on host "):
            WorkdirLock(str(tmp_path)).acquire()
        cfg = train.load_config("configs/demo.py:stage1", ["--config.plot=False"])
        with pytest.raises(WorkdirBusyError):  # the trainer refuses before it builds anything
            train.run(cfg, str(tmp_path))
        assert sorted(os.listdir(tmp_path)) == ["lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    capsys.readouterr()
    lock = WorkdirLock(str(tmp_path)).acquire()  # the kernel released the dead process's flock
    assert f"took over the workdir lock of pid {holder.pid}" in capsys.readouterr().out
    lock.release()
    with WorkdirLock(str(tmp_path)):  # a clean release leaves nothing to take over
        pass
    assert "took over" not in capsys.readouterr().out
