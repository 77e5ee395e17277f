#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command runs on every worker of the slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b MODEL_DIR=gs://bucket/run \
#   TASK=personalize_amazon_immed_ctx_author_mix launch/tpu_vm_train.sh [extra --gin.X=Y flags]
#
# On TPU VMs JAX finds the other hosts itself, so no --coordinator_address is needed
# (as with T5X). MODEL_DIR should be a gs:// path every worker can reach; a rerun of
# the same command resumes from its latest checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${MODEL_DIR:?set MODEL_DIR}" "${TASK:?set TASK}"
MODEL_GIN="${MODEL_GIN:-models/t5_1_1_base.gin}"
RUN_GIN="${RUN_GIN:-runs/finetune.gin}"
REPO_DIR="${REPO_DIR:-personalize-t5x}"   # checkout on every worker (same path)
TRAIN_STEPS="${TRAIN_STEPS:-10000}"
DEFAULT_LENGTHS="{'inputs': 1024, 'targets': 512}"
LENGTHS="${LENGTHS:-$DEFAULT_LENGTHS}"

printf -v EXTRA ' %q' "$@"
COMMAND="cd ${REPO_DIR} && python3 -m personalize_t5x.trainer.train \
  --gin_file=${MODEL_GIN} --gin_file=${RUN_GIN} \
  --gin.MODEL_DIR=\"'${MODEL_DIR}'\" \
  --gin.MIXTURE_OR_TASK_NAME=\"'${TASK}'\" \
  --gin.TASK_FEATURE_LENGTHS=\"${LENGTHS}\" \
  --gin.TRAIN_STEPS=${TRAIN_STEPS}${EXTRA}"

exec gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all --command "${COMMAND}"
