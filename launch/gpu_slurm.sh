#!/usr/bin/env bash
# SLURM launch for GPU clusters: one process per node, all its GPUs local devices; the mesh spans every GPU.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh configs/stage1.py --config.model.hf_dir=/models/Qwen2.5-7B-Instruct
#
# WORKDIR must be a filesystem shared by all nodes. jax.distributed.initialize() reads the SLURM environment.
#SBATCH --job-name=qzhou-jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch launch/gpu_slurm.sh CONFIG [--config.key=value ...]}
shift
WORKDIR=${WORKDIR:-$PWD/workdirs/$SLURM_JOB_NAME}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# NCCL collectives across nodes; latency-hiding scheduler overlaps FSDP all-gathers with compute.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
srun --ntasks-per-node=1 bash -c "source .venv/bin/activate && python -m qzhou_jax.train --config $CONFIG \
  --workdir $WORKDIR --config.distributed=True $*"
