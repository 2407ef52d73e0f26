"""What the training loop watches besides the loss: stop requests (SIGTERM / Ctrl-C) and stalled training.

Stop requests. Under `jax.distributed` (TPU pods, SLURM) JAX's preemption service receives SIGTERM and Orbax's
`CheckpointManager.reached_preemption(step)` tells every host at the same step: that is used, and no Python
SIGTERM handler is installed (it would replace the service's). Without the service (one process, CPU) and for
SIGINT (which JAX's service does not watch) our own handler sets a flag, gathered over hosts so all stop at the
same step. The first Ctrl-C saves and exits like SIGTERM; a second one exits at once.
"""
from __future__ import annotations

import logging
import os
import signal

import jax
import numpy as np

log = logging.getLogger("qzhou_jax.train")


def _preemption_service() -> bool:
    from jax._src import distributed  # the only place JAX exposes whether the service is running
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class StopRequest:
    def __init__(self, manager):
        self.manager = manager
        self.signal_name: str | None = None
        self.use_orbax = _preemption_service()
        self._previous = {}
        wanted = [signal.SIGINT] + ([] if self.use_orbax else [signal.SIGTERM])
        for sig in wanted:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass

    def _handler(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            print("\nsecond Ctrl-C: exiting now, without saving", flush=True)
            os._exit(130)
        self.signal_name = name
        print(f"\n{name}: saving a checkpoint at the end of this step, then exiting"
              + (" (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""), flush=True)

    def reached(self, step: int) -> str | None:
        """The reason to stop at this step (same on every host), or None."""
        if self.use_orbax and self.manager.reached_preemption(step):
            return "SIGTERM"
        local = self.signal_name is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            local = bool(multihost_utils.process_allgather(np.array(local)).any())
        return (self.signal_name or "signal on another host") if local else None

    def restore(self) -> None:
        """Puts the previous handlers back (a multi-stage run installs a fresh one per stage)."""
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except ValueError:
                pass


class StallDetector:
    """Warns loudly when the gradient norm is exactly 0, or the loss exactly constant, `k` steps in a row: a
    model that no longer learns (e.g. corrupt weights, a collapsed embedding) would otherwise run to the end."""

    def __init__(self, k: int):
        self.k, self.zero_grad, self.same_loss, self.last_loss, self.warned = k, 0, 0, None, set()

    def update(self, step: int, loss: float, grad_norm: float) -> list[str]:
        self.zero_grad = self.zero_grad + 1 if grad_norm == 0.0 else 0
        self.same_loss = self.same_loss + 1 if loss == self.last_loss else 0
        self.last_loss = loss
        messages = []
        if self.zero_grad >= self.k and "grad" not in self.warned:
            messages.append(f"the gradient norm has been exactly 0 for {self.zero_grad} steps (step {step}): the "
                            f"model is not learning; check the restored weights and the data")
            self.warned.add("grad")
        if self.same_loss + 1 >= self.k and "loss" not in self.warned:
            messages.append(f"the loss has been exactly {loss:.6g} for {self.same_loss + 1} steps (step {step}): "
                            f"training has stalled (collapsed embeddings give a constant loss)")
            self.warned.add("loss")
        if self.zero_grad == 0:
            self.warned.discard("grad")
        if self.same_loss == 0:
            self.warned.discard("loss")
        for message in messages:
            log.warning(message)
            print(f"WARNING: {message}", flush=True)
        return messages
