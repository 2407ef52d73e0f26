#!/usr/bin/env bash
# Run a training config on every worker of a Cloud TPU VM slice (v4/v5e/v5p/v6e), one process per host.
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=/mnt/runs/stage1 \
#     launch/tpu_vm.sh configs/stage1.py --config.model.hf_dir=/mnt/models/Qwen2.5-7B-Instruct
#
# Assumes the repository is cloned at ~/qzhou-jax on every worker and WORKDIR is a shared filesystem
# (Filestore / gcsfuse mount) visible to all workers. jax.distributed.initialize() discovers the TPU topology.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared filesystem)}"
CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG [--config.key=value ...]}
shift
ARGS=$(printf ' %q' "$@")

# First time only: install on all workers.
if [[ "${SETUP:-0}" == "1" ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
    "cd ~/qzhou-jax && python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[tpu]'"
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/qzhou-jax && . .venv/bin/activate && python -m qzhou_jax.train --config $CONFIG --workdir $WORKDIR \
   --config.distributed=True $ARGS 2>&1 | tee -a $WORKDIR/log-\$(hostname).txt"
