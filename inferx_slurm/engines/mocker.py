"""Dynamo's mock engine (`dynamo.mocker`): simulated GPUs for the local cluster and tests."""

from __future__ import annotations

from typing import Optional

from inferx_slurm.engines.common import block_size
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics
from inferx_slurm.planning.memory import EngineMemory
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.recipe.sections import ArgValue
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import Parallelism

MODULE = "dynamo.mocker"
# Up in seconds.
STARTUP_TIMEOUT_S = 120.0
# Ships with Dynamo, which the preflight checks on its own.
PREFLIGHT_NEEDS: tuple[str, ...] = ()
KV_OVER_NIXL = False  # one process, no KV moves
# The mock engine simulates the whole worker in one process; the other nodes only hold their
# GPUs for the worker's lifetime, like vLLM's headless ranks do.
FOLLOWER_ARGV: Optional[list[str]] = ["sleep", "infinity"]

PROGRESS_METRICS: tuple[str, ...] = ()
STARTED_METRICS: tuple[str, ...] = ()
DONE_METRICS: tuple[str, ...] = ()
SPEC_ACCEPTED: tuple[str, ...] = ()
SPEC_DRAFTS: tuple[str, ...] = ()
# Simulated: no KV moves and no KV cache to report.
KV_TRANSFER: Optional[KVTransferMetrics] = None
KV_CAPACITY: Optional[KVCapacityMetric] = None


def server_argv(recipe: Recipe) -> Optional[list[str]]:
    return None  # served through the Dynamo frontend only


def derived_args(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    d: dict[str, ArgValue] = {
        "model-path": recipe.model.path,
        "model-name": recipe.model.name,
        "disaggregation-mode": w.role,  # prefill, decode or agg
        "block-size": block_size(recipe),
    }
    if par.dp > 1:
        d["data-parallel-size"] = par.dp
    return d


def engine_memory(recipe: Recipe, args: dict[str, ArgValue]) -> Optional[EngineMemory]:
    return None  # simulates GPUs, holds nothing
