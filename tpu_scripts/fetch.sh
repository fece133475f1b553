#!/usr/bin/env bash
# Copy a run directory back from worker 0 (process 0 writes the results) into DEST (default: here).
#   tpu_scripts/fetch.sh runs/audit [DEST] [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

if [[ ${#ARGS[@]} == 0 ]]; then echo "fetch.sh: name the remote path, e.g. runs/audit" >&2; exit 2; fi
run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$TPU_DIR/${ARGS[0]}" "${ARGS[1]:-.}" "${WHERE[@]}" --worker=0
