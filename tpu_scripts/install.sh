#!/usr/bin/env bash
# Install adl-jax with the TPU extras on every worker. PACKAGE picks what pip installs: the default
# 'adl-jax[tpu]', a requirement such as 'adl-jax[tpu] @ git+https://...', or a local wheel, which is
# first copied to every worker.
#   tpu_scripts/install.sh [PACKAGE] [--dry-run]
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh" "$@"

package=${ARGS[0]:-adl-jax[tpu]}
if [[ -f $package ]]; then
  run gcloud compute tpus tpu-vm scp "$package" "$TPU_NAME:" "${WHERE[@]}" --worker=all
  package="$(basename "$package")[tpu]"
fi
ssh_all "mkdir -p $TPU_DIR && python3 -m pip install -U $(quote "$package")"
