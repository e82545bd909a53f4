#!/usr/bin/env bash
# The embedded default: install what is missing, start the local Slurm cluster (3 nodes x 4
# fake GPUs), and run a 1P1D disaggregated deployment with Dynamo mock engines + aiperf.
#
#   --real-engine   the same 1P1D with real vLLM (CPU build) workers serving a tiny Llama, the
#                   KV cache going prefill -> decode over NIXL; installs the engine first
#                   (a few minutes), and each worker takes one to two minutes to load.
# Other arguments go to `inferx-slurm launch`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
recipe=recipes/disagg/local/mocker-1p1d.yaml
args=()
for a in "$@"; do
    if [[ "$a" == --real-engine ]]; then
        recipe=recipes/disagg/local/vllm-1p1d.yaml
    else
        args+=("$a")
    fi
done
bash setup_scripts/install.sh
if [[ "$recipe" == *vllm* ]]; then
    bash setup_scripts/install_engines.sh --no-sglang
fi
export INFERX_LOCAL_CLUSTER_DIR="${INFERX_LOCAL_CLUSTER_DIR:-/var/tmp/inferx-local-cluster}"
inferx-slurm local-cluster up --nodes 3 --gpus-per-node 4
export SLURM_CONF="$INFERX_LOCAL_CLUSTER_DIR/slurm.conf"
inferx-slurm launch "$recipe" --wait ${args[@]+"${args[@]}"}
