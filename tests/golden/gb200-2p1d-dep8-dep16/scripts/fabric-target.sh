#!/usr/bin/env bash
# NIXL fabric preflight, target side, on each decode node: listens for every prefill node's transfer
# Rendered by inferx-slurm from the recipe and plan; run as: fabric-target.sh PLAN_NODE, before
# any worker starts, with the decode workers' environment (their UCX settings).
set -euo pipefail
node="${1:?usage: fabric-target.sh PLAN_NODE}"
source /shared/results/golden/nodes.env
export DYN_SDK_DISABLE_ANSI_LOGGING=1
export UCX_TLS=cuda_copy,cuda_ipc,tcp
export UCX_CUDA_IPC_ENABLE_MNNVL=y
export UCX_MEMTYPE_CACHE=n
export UCX_MEMTYPE_REG_WHOLE=n
export NCCL_CUMEM_ENABLE=1
export HF_HUB_OFFLINE=1
:
python3 /shared/results/golden/scripts/ports.py /shared/results/golden/ports/fabric-target.node"$node".env fabric.target=auto:INFERX_FABRIC_PORT
source /shared/results/golden/ports/fabric-target.node"$node".env
exec python3 /shared/results/golden/scripts/fabric_probe.py target --node "$node" --record /shared/results/golden/fabric/target.node"$node".json --size 65536 --timeout 30 --port "${INFERX_FABRIC_PORT}" --initiators 4
