"""Engines: per backend, its command line, memory defaults, preflight needs and metrics.

One module per backend (`vllm`, `sglang`, `trtllm`, `mocker`), each with the same names:

- ``MODULE``: the Dynamo worker module it runs; ``server_argv(recipe)``: what follows the
  interpreter for the engine's own OpenAI server (None: it has none);
- ``derived_args(recipe, plan, worker, rank)``: the flags the plan implies for one node;
- ``FOLLOWER_ARGV``: what the other nodes of a worker run instead (None: the engine itself);
- ``STARTUP_TIMEOUT_S``: how long a role may take to register before the run is hung;
- ``PREFLIGHT_NEEDS``, ``KV_OVER_NIXL``: what a worker must import before it loads weights;
- ``engine_memory(recipe, args)``: the memory settings its arguments (and defaults) give;
- ``PROGRESS_METRICS``, ``STARTED_METRICS``, ``DONE_METRICS``, ``SPEC_ACCEPTED``,
  ``SPEC_DRAFTS``: its own server's Prometheus counters;
- ``KV_TRANSFER``, ``KV_CAPACITY``: the series that prove a KV transfer and give the KV
  cache's size (`kv_metrics.py`); None: the engine reports none.

This module maps a recipe's backend to its module and builds what the rest of the package asks.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

from inferx_slurm.engines import mocker, sglang, trtllm, vllm
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics
from inferx_slurm.engines.common import EngineArg, NodeCommand, flag_argv, gpu_pinning, merge_args, own_server, worker_port
from inferx_slurm.planning.memory import EngineMemory
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.planning.ports import PortVar
from inferx_slurm.recipe.sections import Backend, FrontendServer
from inferx_slurm.recipe.schema import Recipe

BACKENDS: dict[Backend, ModuleType] = {Backend.vllm: vllm, Backend.sglang: sglang, Backend.trtllm: trtllm, Backend.mocker: mocker}
MODULES = {b: m.MODULE for b, m in BACKENDS.items()}


def backend_module(recipe: Recipe) -> ModuleType:
    return BACKENDS[recipe.engine.backend]


def node_commands(recipe: Recipe, plan: Plan, w: WorkerPlacement) -> list[NodeCommand]:
    """One command per node of the worker; the leader (rank 0) is the one that registers."""
    mod = backend_module(recipe)
    cmds = []
    for rank, node in enumerate(w.nodes):
        if mod.FOLLOWER_ARGV is not None and rank > 0:
            argv = list(mod.FOLLOWER_ARGV)
            args: list[EngineArg] = []
        else:
            args = merge_args(mod.derived_args(recipe, plan, w, rank), recipe, w.role)
            argv = [recipe.engine.python, *entry_point(recipe), *flag_argv(args)]
        env = {
            **gpu_pinning(recipe, w.slices[rank].gpus),
            "DYN_SYSTEM_PORT": str(worker_port(w, PortVar.system)),
            "VLLM_NIXL_SIDE_CHANNEL_PORT": str(worker_port(w, PortVar.kv_side_channel)),
        }
        cmds.append(NodeCommand(worker=w.name, node=node, node_rank=rank, leader=rank == 0, argv=argv, args=args, env=env))
    return cmds


def entry_point(recipe: Recipe) -> list[str]:
    """What follows the interpreter: a Dynamo worker module, or the engine's own server."""
    mod = backend_module(recipe)
    if own_server(recipe):
        argv = mod.server_argv(recipe)
        # The recipe refuses frontend.server engine for a backend without its own server.
        assert argv is not None, recipe.engine.backend
        return argv
    return ["-m", mod.MODULE]


def startup_timeout(recipe: Recipe, role: str) -> float:
    e = recipe.engine
    return e.role(role).startup_timeout_s or e.startup_timeout_s or backend_module(recipe).STARTUP_TIMEOUT_S


def preflight_needs(recipe: Recipe, role: str) -> list[str]:
    """What a worker must be able to import before it loads weights."""
    mod = backend_module(recipe)
    needs = list(mod.PREFLIGHT_NEEDS)
    if recipe.frontend.server is FrontendServer.dynamo:
        needs.append("dynamo")
    nixl = recipe.engine.require_nixl
    if nixl is None:  # KV moves between prefill and decode engines over NIXL
        nixl = role != "agg" and mod.KV_OVER_NIXL
    if nixl:
        needs.append("nixl")
    return needs


def engine_memory(recipe: Recipe, plan: Plan, role: str) -> Optional[EngineMemory]:
    """The memory settings of a role's engine, from the arguments its leader is started with."""
    w = plan.role_workers(role)[0]
    args = {a.flag: a.value for a in node_commands(recipe, plan, w)[0].args}
    return backend_module(recipe).engine_memory(recipe, args)


def kv_transfer_metrics(recipe: Recipe) -> Optional[KVTransferMetrics]:
    return backend_module(recipe).KV_TRANSFER


def kv_capacity_metric(recipe: Recipe) -> Optional[KVCapacityMetric]:
    return backend_module(recipe).KV_CAPACITY


def _metrics(name: str) -> tuple[str, ...]:
    return tuple(m for mod in BACKENDS.values() for m in getattr(mod, name))


# Every backend's own-server counters, for the driver's progress watch.
PROGRESS_METRICS = _metrics("PROGRESS_METRICS")
STARTED_METRICS = _metrics("STARTED_METRICS")
DONE_METRICS = _metrics("DONE_METRICS")
SPEC_ACCEPTED = _metrics("SPEC_ACCEPTED")
SPEC_DRAFTS = _metrics("SPEC_DRAFTS")
