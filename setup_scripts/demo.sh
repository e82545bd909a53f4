#!/usr/bin/env bash
# The embedded default: install what is missing, start the local Slurm cluster (3 nodes x 4
# fake GPUs), and run a 1P1D disaggregated deployment with Dynamo mock engines + aiperf.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
bash setup_scripts/install.sh
export INFERX_LOCAL_CLUSTER_DIR="${INFERX_LOCAL_CLUSTER_DIR:-/var/tmp/inferx-local-cluster}"
inferx-slurm local-cluster up --nodes 3 --gpus-per-node 4
export SLURM_CONF="$INFERX_LOCAL_CLUSTER_DIR/slurm.conf"
inferx-slurm launch recipes/disagg/local/mocker-1p1d.yaml --wait "$@"
