#!/usr/bin/env bash
# GPU sampler (NVML power, utilization, memory) on this node for the deployment's lifetime;
# rendered by inferx-slurm. Runs outside any container: it needs only the host driver.
set -euo pipefail
exec python3 -m inferx_slurm.runtime.gpumon /shared/results/golden/logs/gpu-"$(hostname)".jsonl --interval 1.0
