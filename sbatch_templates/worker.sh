#!/usr/bin/env bash
# {{ title }}
# Rendered by inferx-slurm from the recipe and plan; run as: {{ script_name }} NODE_RANK
set -euo pipefail
node_rank="${1:?usage: {{ script_name }} NODE_RANK}"
source {{ nodes_env }}
LEADER_ADDR="${INFERX_ADDR_{{ leader_node }}}"
INFRA_ADDR="${INFERX_ADDR_{{ frontend_node }}}"
export LEADER_ADDR INFRA_ADDR
# This node's ports, taken here (the recipe's, checked free, or free ones for auto).
{{ ports }}
{{ env_exports }}
# Every node gets its own compile caches: concurrent builds into one shared cache dir deadlock.
{{ cache_exports }}
# The engine replaces this shell (exec), so this pid is the engine's: the watchdog and
# fault tests signal it directly.
echo $$ > {{ pid_dir }}/{{ worker }}.n"$node_rank".pid
{{ setup_sources }}
# What this node runs on (package versions, model revision, GPUs), checked against the
# recipe's pins before any weights load: a mismatch exits here, in seconds.
{{ identity_check }}
case "$node_rank" in
{{ cases }}
  *) echo "[inferx] {{ worker }}: no node rank $node_rank in this worker" >&2; exit 2 ;;
esac
