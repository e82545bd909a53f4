#!/usr/bin/env bash
# Dynamo frontend: OpenAI-compatible HTTP on {{ http_port }}; rendered by inferx-slurm.
set -euo pipefail
source {{ nodes_env }}
INFRA_ADDR="${INFERX_ADDR_{{ frontend_node }}}"
export INFRA_ADDR
# This step's ports, taken on this node (the recipe's, checked free, or free ones for auto).
{{ ports }}
{{ env_exports }}
echo $$ > {{ pid_dir }}/frontend.pid
echo "[inferx] frontend host=$(hostname) start=$(date +%s.%N)"
exec {{ command }}
