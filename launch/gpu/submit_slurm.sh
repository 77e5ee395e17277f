#!/usr/bin/env bash
# Submits a multi-node job that runs launch/gpu/slurm_train.sh on every node (srun: one
# task per node, each with all of its node's GPUs).
#
#   NODES=4 GPUS_PER_NODE=8 MODEL_DIR=/shared/run TASK=personalize_amazon_syn_ctx_author_mix \
#   launch/gpu/submit_slurm.sh [--dry-run] [--gin.NAME=VALUE ...]
#
# PARTITION and TIME (sbatch's --partition / --time) when set; the environment (MODEL_DIR,
# TASK, NUM_PARTITIONS, ...) travels with the job (--export=ALL).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=launch/common.sh
source "${here}/../common.sh"
parse_args "$@"
: "${MODEL_DIR:?set MODEL_DIR}" "${TASK:?set TASK}"
sbatch_flags=(--job-name=personalize-t5x --nodes="${NODES:-2}" --ntasks-per-node=1
  --gpus-per-node="${GPUS_PER_NODE:-8}" --export=ALL --output=slurm-%j.out)
if [[ -n "${PARTITION:-}" ]]; then sbatch_flags+=(--partition="${PARTITION}"); fi
if [[ -n "${TIME:-}" ]]; then sbatch_flags+=(--time="${TIME}"); fi
cd "${here}/../.."
run sbatch "${sbatch_flags[@]}" --wrap="srun $(quoted launch/gpu/slurm_train.sh "${ARGS[@]}")"
