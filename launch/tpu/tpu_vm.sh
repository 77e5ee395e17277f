#!/usr/bin/env bash
# A Cloud TPU VM (one host or a pod slice) for personalize-t5x, from creation to deletion.
#
#   launch/tpu/tpu_vm.sh [--dry-run] create
#   launch/tpu/tpu_vm.sh [--dry-run] install
#   launch/tpu/tpu_vm.sh [--dry-run] train [--gin.NAME=VALUE ...]
#   launch/tpu/tpu_vm.sh [--dry-run] logs
#   launch/tpu/tpu_vm.sh [--dry-run] delete
#
# create   the TPU VM: ACCELERATOR_TYPE v4-8 is one host; v4-32, v5litepod-16, ... are pod
#          slices of several workers (hosts).
# install  on every worker: clone REPO_URL into REPO_DIR (or update it), `make install`
#          (the pinned stack), then JAX's TPU build of the same jax version.
# train    on every worker at once (a slice is one JAX job; TPU VMs find their peers, so no
#          coordinator flags are needed, as with T5X), in the background, output in LOG.
#          MODEL_DIR must be gs://, reachable by all workers; rerunning resumes.
# logs     follows LOG on worker WORKER (default 0, the one that prints).
# delete   the TPU VM.
#
# Settings (environment): TPU_NAME and ZONE (always); ACCELERATOR_TYPE (v4-8),
# RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default when unset);
# REPO_URL, REPO_DIR (personalize-t5x); MODEL_DIR, TASK, MODEL_GIN, RUN_GIN, LENGTHS,
# TRAIN_STEPS (train; launch/common.sh); LOG (train.log, in REPO_DIR); WORKER (logs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=launch/common.sh
source "${here}/../common.sh"
parse_args "$@"
set -- "${ARGS[@]}"
action="${1:?usage: tpu_vm.sh [--dry-run] create|install|train|logs|delete [--gin.X=Y ...]}"
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-personalize-t5x}"
LOG="${LOG:-train.log}"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="${PROJECT}"); fi

case "${action}" in
  create)
    run "${gcloud_tpu[@]}" create "${TPU_NAME}" "${where[@]}" \
      --accelerator-type="${ACCELERATOR_TYPE:-v4-8}" --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
    ;;
  install)
    : "${REPO_URL:?set REPO_URL (a git URL every worker can clone)}"
    jax_version="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "${here}/../../requirements.lock")"
    remote="$(quoted git clone "${REPO_URL}" "${REPO_DIR}") 2>/dev/null || $(quoted git -C "${REPO_DIR}" pull --ff-only)"
    remote+=" && cd $(quoted "${REPO_DIR}") && make install"
    remote+=" && .venv/bin/python -m pip install $(quoted "jax[tpu]==${jax_version}")"
    run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command="${remote}"
    ;;
  train)
    train_flags "$@"
    remote="cd $(quoted "${REPO_DIR}") && nohup .venv/bin/python -m personalize_t5x.trainer.train"
    remote+=" $(quoted "${TRAIN_FLAGS[@]}") > $(quoted "${LOG}") 2>&1 &"
    run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command="${remote}"
    ;;
  logs)
    run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker="${WORKER:-0}" \
      --command="tail -n +1 -F $(quoted "${REPO_DIR}/${LOG}")"
    ;;
  delete)
    run "${gcloud_tpu[@]}" delete "${TPU_NAME}" "${where[@]}" --quiet
    ;;
  *)
    echo "tpu_vm.sh: unknown action '${action}' (create, install, train, logs, delete)" >&2
    exit 2
    ;;
esac
