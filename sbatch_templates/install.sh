#!/usr/bin/env bash
# Dynamo {{ what }} into this node's container, before any frontend or worker starts on it;
# rendered by inferx-slurm. The container is named per node and job, so every later step on
# this node runs with what this step installed.
set -euo pipefail
echo "[inferx] install host=$(hostname) start=$(date +%s.%N)"
py={{ python }}
# ai-dynamo's own requirements name packages a serving image may not be able to build
# (aisimulate), so Dynamo goes in without them, then the ones its frontend and workers import;
# pip leaves those already in the image alone.
"$py" -m pip install --no-cache-dir --no-deps {{ dynamo_specs }}
"$py" -m pip install --no-cache-dir {{ runtime_deps }}
# NIXL at the version this Dynamo pins for the engine (its `{{ backend }}` extra): the piece an
# image with Dynamo but without NIXL lacks ("NIXL is not available").
nixl=$("$py" - {{ backend }} <<'PY'
import re, sys
from importlib.metadata import requires
for r in requires("ai-dynamo") or []:
    spec, _, marker = r.partition(";")
    if spec.strip().startswith("nixl") and re.search(r"extra\s*==\s*['\"]%s['\"]" % re.escape(sys.argv[1]), marker):
        print(spec.strip())
        break
PY
)
if [ -n "$nixl" ]; then
    "$py" -m pip install --no-cache-dir "$nixl"
else
    echo "[inferx] install: ai-dynamo pins no NIXL for backend {{ backend }}; none installed"
fi
echo "[inferx] install done $(date +%s.%N)"
