"""Multi-process start-up for the commands that take --distributed / config.distributed (train, mine)."""
from __future__ import annotations

import os

import jax


def initialize_distributed() -> None:
    """jax.distributed.initialize(): TPU VMs and SLURM are auto-detected; elsewhere (e.g. several CPU processes on
    one machine, launch/local_multiprocess.sh) JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID say
    who is who, and CPU collectives go through gloo."""
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)

