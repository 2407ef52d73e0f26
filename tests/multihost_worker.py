"""One process of a local multi-process ("multi-host") CPU training run, for tests/test_multihost.py.

    python -m tests.multihost_worker --process_id=0 --num_processes=2 --port=PORT --workdir=DIR \
        [--local_devices=4] [--config=configs/demo.py:stage1] [--config.train.steps=6 ...]

Each process gets `local_devices` fake CPU devices and joins the others through jax.distributed (coordinator on
127.0.0.1:PORT, Gloo for cross-process CPU collectives), then runs `qzhou_jax.train.run` on the shared workdir.
To let the test check what every host fed into each global step, the worker wraps `global_batch.to_global` and prints
one `HOST_BATCH {json}` line per step: the host batch's dataset ids, a fingerprint of its arrays and the shapes
of the host and global batches. A final `SUMMARY {json}` line gives the run summary and the process topology.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--local_devices", type=int, default=4)
    parser.add_argument("--config", default="configs/demo.py:stage1")
    parser.add_argument("--init_timeout", type=int, default=120, help="seconds to wait for the other processes")
    return parser.parse_known_args(argv)  # the rest are --config.a.b=value overrides


def fingerprint(host_batch, keys) -> str:
    """A digest of a host batch's arrays (shapes included), to compare against a reference pipeline."""
    import hashlib

    import numpy as np

    digest = hashlib.sha1()
    for key in keys:
        if host_batch.get(key) is None:  # optional fields (batch.FIELDS) a batch does not carry
            continue
        value = np.ascontiguousarray(host_batch[key])
        digest.update(f"{key}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def main(argv=None) -> None:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's launcher asks for stacks before a kill
    # Before JAX is imported: this process's fake devices, CPU only, Gloo collectives across processes.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"

    import json

    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py, for the reference run
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id, initialization_timeout=args.init_timeout)

    from qzhou_jax.train import loop as train
    from qzhou_jax.data import global_batch

    original_to_global = global_batch.to_global

    def recording_to_global(host_batch, shardings):
        batch = original_to_global(host_batch, shardings)
        rows = "anchor_ids" if "anchor_ids" in host_batch else "packed_anchor_index"  # packed batches: data.packing
        record = dict(process=jax.process_index(),
                      dataset_ids=np.asarray(host_batch["dataset_id"]).tolist(),
                      fingerprint=fingerprint(host_batch, train.BATCH_KEYS),
                      host_shape=list(np.shape(host_batch[rows])), global_shape=list(batch[rows].shape),
                      keys=sorted(host_batch))
        print("HOST_BATCH " + json.dumps(record), flush=True)
        return batch

    global_batch.to_global = recording_to_global
    cfg = train.load_config(args.config, overrides)
    summary = train.run(cfg, args.workdir)
    topology = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                    local_devices=jax.local_device_count(), global_devices=jax.device_count())
    print("SUMMARY " + json.dumps({**topology, "step": summary["step"], "losses": summary["losses"]}), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
