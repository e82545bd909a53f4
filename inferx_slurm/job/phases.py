"""A run's phases, its step kinds, its fault kinds and its timeline events: one set of names shared by the
driver, sweeps, CI and the CLI. Enums of strings, so status.json holds plain strings and a
reader compares either; standard library only, so the driver names them before it imports
anything heavy."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    pending = "pending"  # no status.json yet: queued, or the driver has not started
    starting = "starting"
    ready = "ready"
    benchmarking = "benchmarking"
    evaluating = "evaluating"  # the recipe's eval tasks, after the benchmark points (or alone)
    done = "done"
    failed = "failed"

    @property
    def ended(self) -> bool:
        return self in (Phase.done, Phase.failed)


class StepKind(str, Enum):
    """What a step is; the driver starts them kind by kind."""

    infra = "infra"  # etcd and NATS
    install = "install"  # the Dynamo install into each node's container
    fabric = "fabric"  # the NIXL fabric check between prefill and decode nodes
    frontend = "frontend"
    worker = "worker"
    monitor = "monitor"  # the GPU samplers
    node_cache = "node_cache"  # each node's copy of the weights

    def __str__(self) -> str:
        # Diagnoses name the kind as status.json does ("frontend exited"), on every Python.
        return self.value


class FaultKind(str, Enum):
    """Why a run failed; CI maps each to an exit code (ci/report.py)."""

    exited = "exited"  # a step's process exited
    not_ready = "not_ready"  # workers did not register within their startup timeout
    node_down = "node_down"
    stalled = "stalled"  # the benchmark made no progress
    cancelled = "cancelled"  # scancel, a signal, or the time-limit warning
    infra = "infra"  # the allocation or the discovery servers
    install = "install"  # the Dynamo install into the containers
    node_cache = "node_cache"  # a node could not copy the weights where model.node_cache requires it
    time_limit = "time_limit"  # stopped before Slurm's limit, with partial results
    client = "client"  # the benchmark client crashed or wrote nothing
    fabric = "fabric"  # the NIXL fabric preflight: a prefill node could not move KV bytes to a decode node
    engine_fatal = "engine_fatal"  # an engine's log said it cannot come up, before its process exited
    eval = "eval"  # the eval could not finish (the endpoint stopped answering, its data went away)
    internal = "internal"  # a bug in the driver
    not_run = "not_run"  # a packed deployment an earlier one's fault kept from running


# Faults after which nothing more can run in the allocation (a packed sweep stops there).
ENDS_ALLOCATION = frozenset({FaultKind.cancelled, FaultKind.time_limit, FaultKind.node_down})


class EventKind(str, Enum):
    """The timeline of a run, in the order a good run passes through it."""

    allocation = "allocation"  # Slurm started the job (whole seconds: Slurm's resolution)
    interpreter = "interpreter"  # the driver's process started (before its imports)
    nodes = "nodes"  # hosts and addresses resolved, nodes.env written
    infra_ready = "infra ready"
    installed = "installed"
    fabric_ok = "fabric ok"  # every prefill node moved bytes to every decode node over NIXL
    step_started = "step started"  # one srun step launched
    node_cache_warning = "node cache warning"  # a node serves from the shared stage instead of its copy
    weights_ready = "weights ready"  # every node's copy settled (model.node_cache)
    engines_started = "engines started"
    preflight = "preflight"  # a worker's identity probe reported (its report's time)
    registered = "registered"  # the frontend's count of ready workers changed
    ready = "ready"
    engines_shared = "engines shared"  # a packed deployment benchmarks on engines already up
    benchmark = "benchmark"  # a benchmark point started
    invalid_point = "invalid point"  # a point whose KV transfers or tokens prove it is no result
    point_done = "point done"
    kv_capacity_not_planned = "kv capacity not planned"  # no memory plan to hold the engines' KV capacity against
    kv_capacity_warning = "kv capacity warning"  # an engine sized its KV cache far from the plan
    eval = "eval"  # an eval task started
    eval_done = "eval done"
    torn_down = "torn down"
    done = "done"
    failed = "failed"
    not_run = "not run"
