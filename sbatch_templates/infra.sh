#!/usr/bin/env bash
# Discovery infra ({{ discovery }}) for the deployment; rendered by inferx-slurm.
set -euo pipefail
source {{ nodes_env }}
INFRA_ADDR="${INFERX_ADDR_{{ frontend_node }}}"
state={{ state_dir }}
mkdir -p "$state"
echo "[inferx] infra host=$(hostname) start=$(date +%s.%N)"
# This step's ports, taken on this node (the recipe's, checked free, or free ones for auto).
{{ ports }}
{{ body }}
