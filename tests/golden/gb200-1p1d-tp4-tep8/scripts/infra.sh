#!/usr/bin/env bash
# Discovery infra (etcd+nats) for the deployment; rendered by inferx-slurm.
set -euo pipefail
source /shared/results/golden/nodes.env
INFRA_ADDR="${INFERX_ADDR_0}"
state=/shared/results/golden/infra
mkdir -p "$state"
echo "[inferx] infra host=$(hostname) start=$(date +%s.%N)"
# This step's ports, taken on this node (the recipe's, checked free, or free ones for auto).
python3 /shared/results/golden/scripts/ports.py /shared/results/golden/ports/infra.env frontend.etcd_port=auto:INFERX_ETCD_PORT,INFERX_ETCD_PEER_PORT frontend.nats_port=auto:INFERX_NATS_PORT
source /shared/results/golden/ports/infra.env
for b in /lustre/infra/bin/etcd /lustre/infra/bin/nats-server; do command -v "$b" >/dev/null || { echo "[inferx] infra: $b not found in frontend.infra_bin_dir (/lustre/infra/bin): run setup_scripts/provision_infra_bins.sh DIR on a node of this architecture and set frontend.infra_bin_dir: DIR" >&2; exit 1; }; done
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT EXIT
/lustre/infra/bin/etcd --name inferx --data-dir "$state/etcd" --listen-client-urls "http://0.0.0.0:${INFERX_ETCD_PORT}" --advertise-client-urls "http://$INFRA_ADDR:${INFERX_ETCD_PORT}" --listen-peer-urls "http://127.0.0.1:${INFERX_ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${INFERX_ETCD_PEER_PORT}" --initial-cluster "inferx=http://127.0.0.1:${INFERX_ETCD_PEER_PORT}" > "$state/etcd.log" 2>&1 &
/lustre/infra/bin/nats-server -js -a 0.0.0.0 -p "${INFERX_NATS_PORT}" --store_dir "$state/nats" > "$state/nats.log" 2>&1 &
# Either server exiting ends the step, so the watchdog sees it at once.
wait -n
echo "[inferx] a discovery server exited; see $state/*.log" >&2
exit 1
