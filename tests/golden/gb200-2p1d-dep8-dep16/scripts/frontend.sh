#!/usr/bin/env bash
# Dynamo frontend: OpenAI-compatible HTTP on port 8000; rendered by inferx-slurm.
set -euo pipefail
source /shared/results/golden/nodes.env
INFRA_ADDR="${INFERX_ADDR_0}"
export INFRA_ADDR
export DYN_SDK_DISABLE_ANSI_LOGGING=1
export UCX_TLS=cuda_copy,cuda_ipc,tcp
export UCX_CUDA_IPC_ENABLE_MNNVL=y
export UCX_MEMTYPE_CACHE=n
export UCX_MEMTYPE_REG_WHOLE=n
export NCCL_CUMEM_ENABLE=1
export ETCD_ENDPOINTS=http://"${INFRA_ADDR}":2379
export NATS_SERVER=nats://"${INFRA_ADDR}":4222
export HF_HUB_OFFLINE=1
echo $$ > /shared/results/golden/logs/frontend.pid
echo "[inferx] frontend host=$(hostname) start=$(date +%s.%N)"
exec python3 -m dynamo.frontend --http-port 8000 --router-mode round-robin
