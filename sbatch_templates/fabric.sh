#!/usr/bin/env bash
# NIXL fabric preflight, {{ side }} side, on each {{ role }} node: {{ what }}
# Rendered by inferx-slurm from the recipe and plan; run as: {{ script_name }} PLAN_NODE, before
# any worker starts, with the {{ role }} workers' environment (their UCX settings).
set -euo pipefail
node="${1:?usage: {{ script_name }} PLAN_NODE}"
source {{ nodes_env }}
{{ env_exports }}
{{ setup_sources }}
{{ ports }}
exec {{ command }}
