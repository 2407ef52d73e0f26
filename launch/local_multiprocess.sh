#!/usr/bin/env bash
# Rehearse multi-host training on one CPU machine: N processes, each with D fake devices, gloo collectives.
#
#   launch/local_multiprocess.sh 2 4 configs/demo.py:stage1 workdirs/mh --config.train.steps=10
set -euo pipefail
N=${1:?processes} D=${2:?devices per process} CONFIG=${3:?config} WORKDIR=${4:?workdir}
shift 4
PORT=${PORT:-12355}
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS=--xla_force_host_platform_device_count=$D JAX_PLATFORMS=cpu \
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$N JAX_PROCESS_ID=$i \
    python -m qzhou_jax.train --config "$CONFIG" --workdir "$WORKDIR" --config.distributed=True "$@" \
    > "$WORKDIR.proc$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 5 "$WORKDIR".proc*.log
exit $status
