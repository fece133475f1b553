#!/usr/bin/env bash
# Run one command on all workers at once, in the working directory, as one multi-host JAX run:
# ADL_MULTIHOST=1 makes `adl` call jax.distributed.initialize, which finds its peers on the slice.
# Each worker's output also goes to TPU_DIR/logs/worker-HOST.log.
#   tpu_scripts/launch.sh adl audit --base ... --finetuned ... --mesh fsdp=2,model=8 --out runs/a [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

if [[ ${#ARGS[@]} == 0 ]]; then echo "launch.sh: give the command to run" >&2; exit 2; fi
words=()
for arg in "${ARGS[@]}"; do words+=("$(quote "$arg")"); done
ssh_all "cd $TPU_DIR && mkdir -p logs && ADL_MULTIHOST=1 ${words[*]} 2>&1 | tee logs/worker-\$(hostname).log"
