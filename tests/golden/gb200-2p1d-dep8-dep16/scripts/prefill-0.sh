#!/usr/bin/env bash
# prefill-0: DEP8 over 8 GPUs on plan nodes 0, 1
# Rendered by inferx-slurm from the recipe and plan; run as: prefill-0.sh NODE_RANK
set -euo pipefail
node_rank="${1:?usage: prefill-0.sh NODE_RANK}"
source /shared/results/golden/nodes.env
LEADER_ADDR="${INFERX_ADDR_0}"
INFRA_ADDR="${INFERX_ADDR_0}"
export LEADER_ADDR INFRA_ADDR
# This node's ports, taken here (the recipe's, checked free, or free ones for auto).
python3 /shared/results/golden/scripts/ports.py /shared/results/golden/ports/prefill-0.n"$node_rank".env placement.port_base=auto:INFERX_SYSTEM_PORT,INFERX_KV_SIDE_CHANNEL_PORT,INFERX_RENDEZVOUS_PORT,INFERX_KV_EVENTS_PORT/10 --take /shared/results/golden/ports/infra.env --rank "$node_rank" --leader /shared/results/golden/ports/prefill-0.n0.env:INFERX_RENDEZVOUS_PORT
source /shared/results/golden/ports/prefill-0.n"$node_rank".env
export DYN_SDK_DISABLE_ANSI_LOGGING=1
export UCX_TLS=cuda_copy,cuda_ipc,tcp
export UCX_CUDA_IPC_ENABLE_MNNVL=y
export UCX_MEMTYPE_CACHE=n
export UCX_MEMTYPE_REG_WHOLE=n
export NCCL_CUMEM_ENABLE=1
export ETCD_ENDPOINTS=http://"${INFRA_ADDR}":"${INFERX_ETCD_PORT}"
export NATS_SERVER=nats://"${INFRA_ADDR}":"${INFERX_NATS_PORT}"
export HF_HUB_OFFLINE=1
# Every node gets its own compile caches: concurrent builds into one shared cache dir deadlock.
export TORCH_EXTENSIONS_DIR=/shared/results/golden/cache/"$(hostname)"/torch_extensions_dir
export TRITON_CACHE_DIR=/shared/results/golden/cache/"$(hostname)"/triton_cache_dir
export FLASHINFER_WORKSPACE_BASE=/shared/results/golden/cache/"$(hostname)"/flashinfer_workspace_base
export VLLM_CACHE_ROOT=/shared/results/golden/cache/"$(hostname)"/vllm_cache_root
export XDG_CACHE_HOME=/shared/results/golden/cache/"$(hostname)"/xdg_cache_home
# The engine replaces this shell (exec), so this pid is the engine's: the watchdog and
# fault tests signal it directly.
echo $$ > /shared/results/golden/logs/prefill-0.n"$node_rank".pid
# When the engine's main process exits, even by SIGKILL, which cannot take its children along,
# what is left of its process group (engine cores, workers) is killed: orphans holding on keep
# the step alive, so nobody would see the engine die. srun makes each task a group leader.
reap_group() {
  ( trap '' TERM INT HUP
    # Gone, or a zombie its parent has yet to reap: either way the engine has exited.
    while { read -r s < /proc/$$/stat; } 2>/dev/null && s=${s##*) } && [[ ${s%% *} != Z ]]; do sleep 1; done
    kill -KILL -- -$$ ) </dev/null >/dev/null 2>&1 &
}
:
# What this node runs on (package versions, model revision, GPUs), checked against the
# recipe's pins before any weights load: a mismatch exits here, in seconds.
python3 /shared/results/golden/scripts/identity_probe.py --backend vllm --model /lustre/models/MiniMax-M3-FP8 --expect '{}' --require vllm,dynamo,nixl --where 'image vllm/vllm-openai:minimax-m3' --out /shared/results/golden/provenance/prefill-0.n"$node_rank".json
case "$node_rank" in
  0)  # plan node 0 (leader)
    export CUDA_VISIBLE_DEVICES=0,1,2,3
    export DYN_SYSTEM_PORT="${INFERX_SYSTEM_PORT}"
    export VLLM_NIXL_SIDE_CHANNEL_PORT="${INFERX_KV_SIDE_CHANNEL_PORT}"
    echo "[inferx] prefill-0 node_rank=$node_rank host=$(hostname) gpus=${CUDA_VISIBLE_DEVICES:-unset} start=$(date +%s.%N)"
    reap_group; exec python3 -m dynamo.vllm --model /lustre/models/MiniMax-M3-FP8 --served-model-name minimax-m3 --disaggregation-mode prefill --tensor-parallel-size 1 --data-parallel-size 8 --data-parallel-size-local 4 --enable-expert-parallel --data-parallel-address "${LEADER_ADDR}" --data-parallel-rpc-port "${INFERX_RENDEZVOUS_PORT}" --data-parallel-start-rank 0 --block-size 128 --max-model-len 2304 --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}' --attention-backend FLASHINFER --no-enable-prefix-caching --trust-remote-code ;;
  1)  # plan node 1
    export CUDA_VISIBLE_DEVICES=0,1,2,3
    export DYN_SYSTEM_PORT="${INFERX_SYSTEM_PORT}"
    export VLLM_NIXL_SIDE_CHANNEL_PORT="${INFERX_KV_SIDE_CHANNEL_PORT}"
    echo "[inferx] prefill-0 node_rank=$node_rank host=$(hostname) gpus=${CUDA_VISIBLE_DEVICES:-unset} start=$(date +%s.%N)"
    reap_group; exec python3 -m dynamo.vllm --model /lustre/models/MiniMax-M3-FP8 --served-model-name minimax-m3 --disaggregation-mode prefill --tensor-parallel-size 1 --data-parallel-size 8 --data-parallel-size-local 4 --enable-expert-parallel --data-parallel-address "${LEADER_ADDR}" --data-parallel-rpc-port "${INFERX_RENDEZVOUS_PORT}" --data-parallel-start-rank 4 --headless --block-size 128 --max-model-len 2304 --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}' --attention-backend FLASHINFER --no-enable-prefix-caching --trust-remote-code ;;
  *) echo "[inferx] prefill-0: no node rank $node_rank in this worker" >&2; exit 2 ;;
esac
