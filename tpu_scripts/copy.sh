#!/usr/bin/env bash
# Copy local files or directories (model configs, finetuning data, a corpus) into the working directory
# of every worker.
#   tpu_scripts/copy.sh PATH... [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

if [[ ${#ARGS[@]} == 0 ]]; then echo "copy.sh: name the paths to copy" >&2; exit 2; fi
ssh_all "mkdir -p $TPU_DIR"
run gcloud compute tpus tpu-vm scp --recurse "${ARGS[@]}" "$TPU_NAME:$TPU_DIR/" "${WHERE[@]}" --worker=all
