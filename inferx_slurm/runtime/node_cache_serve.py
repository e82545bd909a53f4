"""The driver's side of `model.node_cache`: wait for every node's copy step, then settle where
each engine reads its weights and write it where the worker scripts read it.

Engines of one role must name one model path (Dynamo rejects workers whose model cards differ),
so a role reads local copies only when every node it runs on has one, at one path; otherwise the
whole role reads the shared stage, and the job's status says why.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from inferx_slurm.fsutil import atomic_write, read_json
from inferx_slurm.job.node_cache import env_file, result_file
from inferx_slurm.planning.placement import Plan
from inferx_slurm.runtime.node_cache_step import NodeOutcome
from inferx_slurm.runtime.steps import RunningStep, describe_exit

POLL_S = 0.2


def await_steps(steps: list[RunningStep], check: Callable[[], None]) -> None:
    """Until every copy step has exited; ``check`` raises to stop early (a cancel)."""
    while any(s.poll() is None for s in steps):
        check()
        time.sleep(POLL_S)


@dataclass
class Settled:
    paths: dict[tuple[str, int], str]  # (worker, node rank) -> the model path its engine reads
    outcomes: dict[int, NodeOutcome]
    warnings: list[str] = field(default_factory=list)
    failed: Optional[tuple[RunningStep, str]] = None  # the step that stops the job, and why

    def summary(self) -> dict[str, str]:
        return {o.host: o.describe() for o in self.outcomes.values()}


def _outcome(job_dir: Path, step: RunningStep) -> NodeOutcome:
    try:
        return NodeOutcome.model_validate(read_json(job_dir / result_file(step.step.node)))
    except (OSError, ValueError):
        # The step died before it could say anything (no interpreter, the node lost): no local copy.
        return NodeOutcome(node=step.step.node, host=step.host, dir="", problem="internal",
                           message=f"the node cache step ended ({describe_exit(step.returncode)}) without an outcome; "
                           f"see {step.log}")


def settle(job_dir: Path, plan: Plan, steps: list[RunningStep], shared: str) -> Settled:
    """Where every engine reads its weights, from the copy steps' outcomes; ``shared`` is the stage."""
    outcomes = {s.step.node: _outcome(job_dir, s) for s in steps}
    by_node = {s.step.node: s for s in steps}
    out = Settled(paths={}, outcomes=outcomes)
    for node, s in sorted(by_node.items()):
        o = outcomes[node]
        if s.returncode not in (0, None):
            out.failed = (s, f"node cache on {o.host}: {o.message or describe_exit(s.returncode)}")
            return out
        if o.path is None:
            out.warnings.append(f"node {node} ({o.host}) reads the shared copy: {o.message}")
    for role in dict.fromkeys(w.role for w in plan.workers):
        workers = plan.role_workers(role)
        nodes = sorted({n for w in workers for n in w.nodes})
        leader_paths = {outcomes[w.leader].path for w in workers}
        missing = [n for n in nodes if outcomes[n].path is None]
        local = not missing and len(leader_paths) == 1
        if not local and len(missing) < len(nodes):
            why = (f"node {', '.join(map(str, missing))} has no local copy" if missing
                   else "their nodes' copies are at different paths ({node} in model.node_cache.dir)")
            out.warnings.append(f"{role} workers read the shared copy {shared}: engines of one role must read one "
                                f"path and {why}")
        for w in workers:
            for rank, node in enumerate(w.nodes):
                out.paths[(w.name, rank)] = outcomes[node].path if local else shared  # type: ignore[assignment]
    return out


def write_env(job_dir: Path, settled: Settled) -> None:
    """One file per worker node, sourced by its worker script before the engine starts."""
    for (worker, rank), path in settled.paths.items():
        atomic_write(job_dir / env_file(worker, rank), f"export INFERX_NODE_MODEL={shlex.quote(path)}\n")
