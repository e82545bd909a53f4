"""Failure detection. Every check returns a Fault naming what failed and where, or None."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from inferx_slurm.job.phases import FaultKind, StepKind
from inferx_slurm.runtime import nodes as nodes_mod
from inferx_slurm.runtime.steps import RunningStep, describe_exit

HINTS = [
    # (substring in the log tail, what to do)
    ("Stale file handle", "several nodes wrote one shared cache at once: stage the model first (model.stage_dir) and serve with HF_HUB_OFFLINE=1"),
    ("NIXL is not available", "the image has no NIXL bindings, which NixlConnector needs: install Dynamo with its NIXL into the container (engine.dynamo_install) or use an image that ships nixl"),
    ("Dynamo is not available", "the image has no Dynamo: set engine.dynamo_install (a version or a wheel) so each node's container gets it before the workers start"),
    ("LocalEntryNotFoundError", "a hub download was attempted with HF_HUB_OFFLINE=1: stage the model (inferx-slurm model stage) and point model.path at it"),
    ("offline mode is enabled", "a hub download was attempted with HF_HUB_OFFLINE=1: stage the model (inferx-slurm model stage) and point model.path at it"),
    ("FileLock", "a build is waiting on a lock in a shared cache dir: every node needs its own TORCH_EXTENSIONS_DIR/TRITON_CACHE_DIR (the default; check recipe env overrides)"),
    ("torch_extensions", "concurrent builds into one shared torch extensions dir deadlock: keep per-node cache dirs (the default)"),
    ("CUDA out of memory", "the engine ran out of GPU memory: lower max-num-seqs / gpu-memory-utilization or use more GPUs per worker"),
    ("Address already in use", "a port is taken: leave the recipe's port fields out (auto: free ones are taken on each node at start) or set free ones"),
    ("[inferx] ports: port", "a port the recipe names is held on that node, by the process the log names: stop it, or leave that port field out (auto)"),
    ("Rejected incompatible workers", "the frontend rejected a worker whose model card differs from the others: give every worker the same model path, args and DYN_SYSTEM_PORT setting"),
    ("identity mismatch", "the worker's environment is not what the recipe pins (expect.*): run the pinned image and model, or update the pin after checking the change"),
    ("System status server startup failed", "a worker's system port is taken: two workers on one node share DYN_SYSTEM_PORT"),
]


@dataclass
class Fault:
    kind: FaultKind
    step: Optional[RunningStep]
    message: str
    at: float = field(default_factory=time.time)
    host: str = ""

    def diagnosis(self, tail_lines: int = 15) -> str:
        parts = [self.message]
        if self.step is not None:
            s = self.step.step
            who = f"{s.role} worker {s.index}" if s.kind == StepKind.worker else s.kind
            parts.append(
                f"Where: {who} (step {s.name}), plan node {s.node}, host {self.step.host}; "
                f"{describe_exit(self.step.returncode)}; log {self.step.log}."
            )
            tail = self.step.tail(tail_lines)
            hints = {h for needle, h in HINTS for line in tail if needle in line}
            if hints:
                parts.append("Hint: " + " / ".join(sorted(hints)) + ".")
            if tail:
                parts.append("Last log lines:\n    " + "\n    ".join(tail))
        return "\n".join(parts)


def check_exits(steps: list[RunningStep]) -> Optional[Fault]:
    for s in steps:
        # A sampler that ends (no NVML on the node) is not a fault of the deployment, nor is a
        # node-cache copy or a fabric probe ending: the driver reads its outcome.
        if s.stopping or s.step.kind in (StepKind.monitor, StepKind.node_cache, StepKind.fabric):
            continue
        rc = s.poll()
        if rc is not None:
            st = s.step
            who = f"{st.role} worker {st.index}" if st.kind == StepKind.worker else st.kind
            return Fault(FaultKind.exited, s, f"{who} exited ({describe_exit(rc)}) on host {s.host}.", host=s.host)
    return None


class NodeWatch:
    """Notices a dead node: its slurmd stops answering, or Slurm marks it down."""

    def __init__(self, hosts: list[str]):
        self.hosts = hosts
        self.endpoints = nodes_mod.slurmd_endpoints(hosts)
        self.misses: dict[str, int] = {h: 0 for h in hosts}

    def check(self, steps: list[RunningStep]) -> Optional[Fault]:
        for host in self.hosts:
            addr, port = self.endpoints[host]
            # Two misses in a row: one refused connect can be a slurmd restarting its listener.
            self.misses[host] = 0 if nodes_mod.slurmd_alive(addr, port) else self.misses[host] + 1
            if self.misses[host] >= 2:
                return self._fault(host, steps, f"node {host}: slurmd at {addr}:{port} stopped answering")
        states = nodes_mod.node_states(self.hosts)
        for host, state in states.items():
            if state and nodes_mod.is_dead(state):
                return self._fault(host, steps, f"node {host} is {state} in Slurm")
        return None

    @staticmethod
    def _fault(host: str, steps: list[RunningStep], what: str) -> Fault:
        on_node = [s for s in steps if s.host == host]
        victim = next((s for s in on_node if s.step.kind == StepKind.worker), on_node[0] if on_node else None)
        names = ", ".join(s.step.name for s in on_node) or "no steps"
        return Fault(FaultKind.node_down, victim, f"{what}; it ran {names}.", host=host)


class FaultRaised(Exception):
    """Raised where a fault is found; the driver ends the run with its diagnosis."""

    def __init__(self, fault: Fault):
        super().__init__(fault.message)
        self.fault = fault
