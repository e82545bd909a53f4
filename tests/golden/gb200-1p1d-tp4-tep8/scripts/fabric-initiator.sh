#!/usr/bin/env bash
# NIXL fabric preflight, initiator side, on each prefill node: writes into every decode node's target and reads it back
# Rendered by inferx-slurm from the recipe and plan; run as: fabric-initiator.sh PLAN_NODE, before
# any worker starts, with the prefill workers' environment (their UCX settings).
set -euo pipefail
node="${1:?usage: fabric-initiator.sh PLAN_NODE}"
source /shared/results/golden/nodes.env
export DYN_SDK_DISABLE_ANSI_LOGGING=1
export UCX_TLS=cuda_copy,cuda_ipc,tcp
export UCX_CUDA_IPC_ENABLE_MNNVL=y
export UCX_MEMTYPE_CACHE=n
export UCX_MEMTYPE_REG_WHOLE=n
export NCCL_CUMEM_ENABLE=1
export HF_HUB_OFFLINE=1
:
:
exec python3 /shared/results/golden/scripts/fabric_probe.py initiator --node "$node" --record /shared/results/golden/fabric/initiator.node"$node".json --size 65536 --timeout 30 --target 1 "${INFERX_ADDR_1}" /shared/results/golden/ports/fabric-target.node1.env /shared/results/golden/fabric/target.node1.json --target 2 "${INFERX_ADDR_2}" /shared/results/golden/ports/fabric-target.node2.env /shared/results/golden/fabric/target.node2.json
