#!/usr/bin/env bash
# GPU sampler (NVML power, utilization, memory) on this node for the deployment's lifetime;
# rendered by inferx-slurm. Runs outside any container with the host's python3: the sampler is
# one standard-library file in the job dir, so nothing needs installing on the compute nodes.
set -euo pipefail
exec python3 /shared/results/golden/scripts/gpumon.py /shared/results/golden/logs/gpu-"$(hostname)".jsonl --interval 1.0
