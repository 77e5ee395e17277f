#!/usr/bin/env bash
# One task of a multi-node SLURM job: `srun` runs it once per node, all join one JAX job.
#
#   launch/gpu/submit_slurm.sh [--dry-run] [--gin.NAME=VALUE ...]   (submits the job:
#   sbatch --wrap="srun launch/gpu/slurm_train.sh ...")
#
# jax.distributed is wired from SLURM's variables through T5X's flags:
#   --multiprocess_gpu
#   --coordinator_address  the job's first node (scontrol show hostnames) : COORDINATOR_PORT
#   --process_count        SLURM_NTASKS (one task per node)
#   --process_index        SLURM_PROCID
# Each process sees its node's GPUs; NUM_PARTITIONS of them form the `model` axis.
# MODEL_DIR must be on storage every node sees. Other settings as in launch/common.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=launch/common.sh
source "${here}/../common.sh"
parse_args "$@"
: "${SLURM_NTASKS:?not inside a SLURM job: submit with launch/gpu/submit_slurm.sh}" "${SLURM_PROCID:?}"
: "${SLURM_JOB_NODELIST:?}"
first_node="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | sed -n 1p)"  # sed reads to the end: `head` would SIGPIPE scontrol, fatal under pipefail
coordinator="${COORDINATOR:-${first_node}:${COORDINATOR_PORT:-12345}}"
cd "${here}/../.."
train_flags "--gin.partitioning.PjitPartitioner.num_partitions=${NUM_PARTITIONS:-1}" "${ARGS[@]}"
run "${PYTHON:-.venv/bin/python}" -m personalize_t5x.trainer.train \
  --multiprocess_gpu --coordinator_address="${coordinator}" \
  --process_count="${SLURM_NTASKS}" --process_index="${SLURM_PROCID}" \
  "${TRAIN_FLAGS[@]}"
