#!/usr/bin/env bash
# Create the TPU slice: a TPU VM now (default), or with --queued a queued resource that waits for capacity
# (add --spot for spot pricing). Waits until the queued resource is ACTIVE.
#   TPU_TYPE=v5litepod-16 tpu_scripts/create.sh [--queued] [--spot] [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

queued=0
extra=()
for arg in "${ARGS[@]}"; do
  case $arg in
    --queued) queued=1 ;;
    --spot) extra+=(--spot) ;;
    *) echo "create.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [[ $queued == 0 ]]; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$TPU_TYPE" \
    --version="$TPU_VERSION" "${extra[@]}"
  exit
fi
run gcloud compute tpus queued-resources create "$TPU_NAME" "${WHERE[@]}" --node-id="$TPU_NAME" \
  --accelerator-type="$TPU_TYPE" --runtime-version="$TPU_VERSION" "${extra[@]}"
state() {
  run gcloud compute tpus queued-resources describe "$TPU_NAME" "${WHERE[@]}" --format='value(state.state)'
}
if [[ $DRY_RUN == 1 ]]; then state; exit; fi
until [[ $(state) == ACTIVE ]]; do
  echo "waiting for $TPU_NAME ($(state))"
  sleep 60
done
