#!/usr/bin/env bash
# Train on several GPU hosts: run this script once per host (or let SLURM do it).
#
#   COORDINATOR=host0:12345 NUM_HOSTS=2 HOST_INDEX=0 MODEL_DIR=/shared/run \
#   TASK=personalize_amazon_immed_ctx_author_mix launch/multi_gpu_train.sh [--gin.X=Y ...]
#
# Under SLURM (one task per host) the host count and index come from SLURM_NTASKS and
# SLURM_PROCID, and the coordinator defaults to the first host of the allocation.
# Flags are T5X's: --multiprocess_gpu --coordinator_address --process_count --process_index.
# MODEL_DIR must be on storage every host sees; rerunning resumes from its checkpoint.
set -euo pipefail
: "${MODEL_DIR:?set MODEL_DIR}" "${TASK:?set TASK}"
if [[ -n "${SLURM_PROCID:-}" ]]; then
  NUM_HOSTS="${NUM_HOSTS:-${SLURM_NTASKS}}"
  HOST_INDEX="${HOST_INDEX:-${SLURM_PROCID}}"
  FIRST_HOST="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
  COORDINATOR="${COORDINATOR:-${FIRST_HOST}:12345}"
fi
: "${COORDINATOR:?set COORDINATOR (host:port of host 0)}" "${NUM_HOSTS:?set NUM_HOSTS}" "${HOST_INDEX:?set HOST_INDEX}"
MODEL_GIN="${MODEL_GIN:-models/t5_1_1_base.gin}"
RUN_GIN="${RUN_GIN:-runs/finetune.gin}"
TRAIN_STEPS="${TRAIN_STEPS:-10000}"
DEFAULT_LENGTHS="{'inputs': 1024, 'targets': 512}"
LENGTHS="${LENGTHS:-$DEFAULT_LENGTHS}"
# Model parallelism inside a host (GPUs per host), data parallelism across hosts.
NUM_PARTITIONS="${NUM_PARTITIONS:-1}"

cd "$(dirname "$0")/.."
exec python3 -m personalize_t5x.trainer.train \
  --multiprocess_gpu \
  --coordinator_address="${COORDINATOR}" \
  --process_count="${NUM_HOSTS}" \
  --process_index="${HOST_INDEX}" \
  --gin_file="${MODEL_GIN}" --gin_file="${RUN_GIN}" \
  --gin.MODEL_DIR="'${MODEL_DIR}'" \
  --gin.MIXTURE_OR_TASK_NAME="'${TASK}'" \
  --gin.TASK_FEATURE_LENGTHS="${LENGTHS}" \
  --gin.TRAIN_STEPS="${TRAIN_STEPS}" \
  --gin.partitioning.PjitPartitioner.num_partitions="${NUM_PARTITIONS}" \
  "$@"
