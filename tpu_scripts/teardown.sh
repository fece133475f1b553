#!/usr/bin/env bash
# Delete the slice (billing stops): the TPU VM, or with --queued the queued resource and its node.
#   tpu_scripts/teardown.sh [--queued] [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

if [[ ${ARGS[0]:-} == --queued ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${WHERE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${WHERE[@]}" --quiet
fi
