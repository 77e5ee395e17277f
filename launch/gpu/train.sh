#!/usr/bin/env bash
# Train on one node with all its GPUs: one process, one JAX job over the node's devices.
#
#   MODEL_DIR=/data/run TASK=personalize_amazon_syn_ctx_author_mix \
#   launch/gpu/train.sh [--dry-run] [--gin.NAME=VALUE ...]
#
# NUM_PARTITIONS GPUs form the `model` axis (model parallelism), the rest the `data`
# axis: partitioning.PjitPartitioner.num_partitions, as in T5X. CUDA_VISIBLE_DEVICES
# picks the GPUs. Other settings as in launch/common.sh (MODEL_GIN, RUN_GIN, LENGTHS,
# TRAIN_STEPS); PYTHON (default .venv/bin/python of this checkout). Rerunning resumes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=launch/common.sh
source "${here}/../common.sh"
parse_args "$@"
cd "${here}/../.."
train_flags "--gin.partitioning.PjitPartitioner.num_partitions=${NUM_PARTITIONS:-1}" "${ARGS[@]}"
run "${PYTHON:-.venv/bin/python}" -m personalize_t5x.trainer.train "${TRAIN_FLAGS[@]}"
