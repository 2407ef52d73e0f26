"""One run per workdir: `WORKDIR/lock` holds an exclusive flock and says who holds it (pid, host).

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a lock left by a dead
run is free and simply taken over (reported); a live run on the same workdir is refused with its pid and host.
Only process 0 of a multi-host run takes it (hosts share the workdir).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from qzhou_jax.cli_errors import RunFailed


class WorkdirBusyError(RunFailed):
    pass


class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "lock")
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise WorkdirBusyError(f"{os.path.dirname(self.path)} is in use by another run (pid {holder.get('pid')} "
                                   f"on host {holder.get('host')}, since {holder.get('since')}): wait for it, stop it, "
                                   f"or use another --workdir") from None
        previous = _read(fd)
        if previous.get("pid"):
            print(f"took over the workdir lock of pid {previous['pid']} on host {previous.get('host')} "
                  f"(no longer running)", flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
