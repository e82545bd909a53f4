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
exec python3 /shared/results/golden/scripts/fabric_probe.py initiator --node "$node" --record /shared/results/golden/fabric/initiator.node"$node".json --size 65536 --timeout 30 --target 4 "${INFERX_ADDR_4}" /shared/results/golden/ports/fabric-target.node4.env /shared/results/golden/fabric/target.node4.json --target 5 "${INFERX_ADDR_5}" /shared/results/golden/ports/fabric-target.node5.env /shared/results/golden/fabric/target.node5.json --target 6 "${INFERX_ADDR_6}" /shared/results/golden/ports/fabric-target.node6.env /shared/results/golden/fabric/target.node6.json --target 7 "${INFERX_ADDR_7}" /shared/results/golden/ports/fabric-target.node7.env /shared/results/golden/fabric/target.node7.json
