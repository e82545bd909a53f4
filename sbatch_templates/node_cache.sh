#!/usr/bin/env bash
# node cache: the staged weights onto this node's local disk (model.node_cache)
# Rendered by inferx-slurm from the recipe; run as: node-cache.sh PLAN_NODE (one step per node,
# all nodes at once, before any engine starts). It leaves its outcome in {{ results }}/nodePLAN_NODE.json.
set -euo pipefail
node="${1:?usage: node-cache.sh PLAN_NODE}"
exec {{ command }} --node "$node"
