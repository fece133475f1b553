# Sourced by every tpu_scripts/*.sh: settings, --dry-run, and `run`, which runs a command or, dry, prints it.
# Settings come from the environment:
#   TPU_NAME (adl-tpu), TPU_ZONE (us-west4-a), TPU_TYPE (v5litepod-16), TPU_VERSION (v2-alpha-tpuv5-lite),
#   TPU_PROJECT (gcloud's default project when empty), TPU_DIR (adl: the working directory on each worker).
# --dry-run anywhere on the command line, or DRY_RUN=1, prints each gcloud command instead of running it.
# shellcheck shell=bash
set -euo pipefail

TPU_NAME=${TPU_NAME:-adl-tpu}
TPU_ZONE=${TPU_ZONE:-us-west4-a}
TPU_TYPE=${TPU_TYPE:-v5litepod-16}
TPU_VERSION=${TPU_VERSION:-v2-alpha-tpuv5-lite}
TPU_PROJECT=${TPU_PROJECT:-}
TPU_DIR=${TPU_DIR:-adl}
DRY_RUN=${DRY_RUN:-0}

ARGS=()
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done

# Flags every gcloud tpu command takes: the zone, and the project when one is set.
WHERE=(--zone="$TPU_ZONE")
if [[ -n $TPU_PROJECT ]]; then WHERE+=(--project="$TPU_PROJECT"); fi

run() {
  if [[ $DRY_RUN == 1 ]]; then
    local arg words=()
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}

# `quote WORD`: WORD as a shell reads it back, quoted only where it must be, so dry runs stay readable:
# bare, in single quotes, or (holding a single quote) in double quotes with \ " $ ` escaped.
quote() {
  local s=$1
  if [[ $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s != *"'"* ]]; then
    printf "'%s'" "$s"
  else
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//\$/\\\$}
    s=${s//\`/\\\`}
    printf '"%s"' "$s"
  fi
}

# `ssh_all COMMAND`: run a shell command on every worker of the slice, in the working directory.
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}
