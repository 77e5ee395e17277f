# shellcheck shell=bash
# Sourced by every launch script: --dry-run, the one way commands run, the trainer's flags.
#
# --dry-run (anywhere among a script's arguments) prints each command, shell-quoted so it
# can be pasted, instead of running it.

DRY_RUN=0
ARGS=()

# parse_args "$@": sets DRY_RUN and leaves the other arguments, in order, in ARGS.
parse_args() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=("$arg"); fi
  done
}

# run CMD ARG...: runs the command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# quoted ARG...: the arguments as one shell-quoted string (a command for a remote shell).
quoted() {
  local out
  printf -v out ' %q' "$@"
  printf '%s' "${out# }"
}

# train_flags EXTRA...: sets TRAIN_FLAGS to the trainer's flags (gin files, the required
# macros from MODEL_DIR, TASK, LENGTHS, TRAIN_STEPS) followed by EXTRA (e.g. --gin.X=Y).
train_flags() {
  : "${MODEL_DIR:?set MODEL_DIR}" "${TASK:?set TASK (a registered task or mixture)}"
  local default_lengths="{'inputs': 1024, 'targets': 512}"
  local lengths="${LENGTHS:-$default_lengths}"
  # shellcheck disable=SC2034  # read by the scripts that source this file
  TRAIN_FLAGS=(
    "--gin_file=${MODEL_GIN:-models/t5_1_1_base.gin}"
    "--gin_file=${RUN_GIN:-runs/finetune.gin}"
    "--gin.MODEL_DIR='${MODEL_DIR}'"
    "--gin.MIXTURE_OR_TASK_NAME='${TASK}'"
    "--gin.TASK_FEATURE_LENGTHS=${lengths}"
    "--gin.TRAIN_STEPS=${TRAIN_STEPS:-10000}"
    "$@"
  )
}
