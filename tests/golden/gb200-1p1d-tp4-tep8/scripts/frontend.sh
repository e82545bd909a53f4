#!/usr/bin/env bash
# Dynamo frontend: OpenAI-compatible HTTP on a free port chosen at start; rendered by inferx-slurm.
set -euo pipefail
source /shared/results/golden/nodes.env
INFRA_ADDR="${INFERX_ADDR_0}"
export INFRA_ADDR
# This step's ports, taken on this node (the recipe's, checked free, or free ones for auto).
python3 /shared/results/golden/scripts/ports.py /shared/results/golden/ports/frontend.env frontend.http_port=auto:INFERX_HTTP_PORT --take /shared/results/golden/ports/infra.env
source /shared/results/golden/ports/frontend.env
export DYN_SDK_DISABLE_ANSI_LOGGING=1
export UCX_TLS=cuda_copy,cuda_ipc,tcp
export UCX_CUDA_IPC_ENABLE_MNNVL=y
export UCX_MEMTYPE_CACHE=n
export UCX_MEMTYPE_REG_WHOLE=n
export NCCL_CUMEM_ENABLE=1
export ETCD_ENDPOINTS=http://"${INFRA_ADDR}":"${INFERX_ETCD_PORT}"
export NATS_SERVER=nats://"${INFRA_ADDR}":"${INFERX_NATS_PORT}"
export HF_HUB_OFFLINE=1
echo $$ > /shared/results/golden/logs/frontend.pid
echo "[inferx] frontend host=$(hostname) start=$(date +%s.%N)"
exec python3 -m dynamo.frontend --http-port "${INFERX_HTTP_PORT}" --router-mode round-robin
