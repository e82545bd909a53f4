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
# When the engine's main process exits, even by SIGKILL, which cannot take its children along,
# what is left of its process group (engine cores, workers) is killed: orphans holding on keep
# the step alive, so nobody would see the engine die. srun makes each task a group leader.
reap_group() {
  ( trap '' TERM INT HUP
    # Gone, or a zombie its parent has yet to reap: either way the engine has exited.
    while { read -r s < /proc/$$/stat; } 2>/dev/null && s=${s##*) } && [[ ${s%% *} != Z ]]; do sleep 1; done
    kill -KILL -- -$$ ) </dev/null >/dev/null 2>&1 &
}
{{ setup_sources }}
# What this node runs on (package versions, model revision, GPUs), checked against the
# recipe's pins before any weights load: a mismatch exits here, in seconds.
{{ identity_check }}
case "$node_rank" in
{{ cases }}
  *) echo "[inferx] {{ worker }}: no node rank $node_rank in this worker" >&2; exit 2 ;;
esac
