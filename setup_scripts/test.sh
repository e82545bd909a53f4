#!/usr/bin/env bash
# Installs what is missing (the demo's parts and the engines), lints (ruff, configured in
# pyproject.toml) and runs the whole suite, the end-to-end runs on the local Slurm cluster and
# the real vLLM engine included. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
bash setup_scripts/install.sh
bash setup_scripts/install_engines.sh
python3 -m ruff check inferx_slurm tests benchmarks
export INFERX_LOCAL_CLUSTER_DIR="${INFERX_LOCAL_CLUSTER_DIR:-/var/tmp/inferx-local-cluster}"
exec python3 -m pytest -q -p no:cacheprovider "$@"
