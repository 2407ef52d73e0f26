"""`python -m tests.fault_train <train flags>`: the trainer's CLI with a fault injected after a step, for tests.

QZ_CRASH_AFTER_STEP=N: once step N's checkpoint (if any) is written, die like a killed process (os._exit(17),
no clean shutdown). The fault lives here, not in the training loop or the config.
"""
import os

from qzhou_jax.cli import train as train_cli


def crash_after(n: int):
    def after_step(step, manager):
        if step == n:
            manager.wait_until_finished()
            os._exit(17)
    return after_step


if __name__ == "__main__":
    crash = int(os.environ.get("QZ_CRASH_AFTER_STEP", "0"))
    train_cli.main(after_step=crash_after(crash) if crash else None)
