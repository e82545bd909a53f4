#!/usr/bin/env bash
# Discovery infra (etcd+nats) for the deployment; rendered by inferx-slurm.
set -euo pipefail
source /shared/results/golden/nodes.env
INFRA_ADDR="${INFERX_ADDR_0}"
state=/shared/results/golden/infra
mkdir -p "$state"
echo "[inferx] infra host=$(hostname) start=$(date +%s.%N)"
for b in /lustre/infra/bin/etcd /lustre/infra/bin/nats-server; do command -v "$b" >/dev/null || { echo "[inferx] infra: $b not found in frontend.infra_bin_dir (/lustre/infra/bin): run setup_scripts/provision_infra_bins.sh DIR on a node of this architecture and set frontend.infra_bin_dir: DIR" >&2; exit 1; }; done
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT EXIT
/lustre/infra/bin/etcd --name inferx --data-dir "$state/etcd" --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$INFRA_ADDR:2379" --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster inferx=http://127.0.0.1:2380 > "$state/etcd.log" 2>&1 &
/lustre/infra/bin/nats-server -js -a 0.0.0.0 -p 4222 --store_dir "$state/nats" > "$state/nats.log" 2>&1 &
# Either server exiting ends the step, so the watchdog sees it at once.
wait -n
echo "[inferx] a discovery server exited; see $state/*.log" >&2
exit 1
