"""The first steps of a job, started before the driver (runtime/entry.py runs this, then the driver).

The driver's imports (the recipe, plan and step models) and its reading of the job dir take a
good part of a second on a busy node. Starting the first steps (the frontend and engines, or
the discovery servers, or the Dynamo install) needs only the hosts and launch.json, so they
start first and load while the driver starts. Until the steps are started, this module uses
the standard library alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.fsutil import atomic_write_json
from inferx_slurm.job.launch import Launch, fill
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import EventKind, Phase
from inferx_slurm.runtime import nodes
from inferx_slurm.runtime.steps import RunningStep, stop_all


@dataclass
class EarlyStart:
    """The hosts and the steps started before the driver."""

    t0: float  # when the run started: the driver's clock starts here too
    launch: Launch
    hosts: list[str]
    addrs: dict[str, str]
    resolved_at: float  # when nodes.env was written
    kinds: list[str]
    steps: list[tuple[str, RunningStep]]  # by step name

    @property
    def running(self) -> list[RunningStep]:
        return [rs for _, rs in self.steps]


def launch_steps(launch: Launch, kind: str, paths: JobPaths, hosts: list[str], image: Optional[str],
                 models: Optional[dict[str, Any]] = None) -> list[tuple[str, RunningStep]]:
    """Start every step of one kind on its host; returns them running, by name. `models`: the
    steps' models by name, where the caller has them (the driver sets them on early steps)."""
    job_id = os.environ.get("SLURM_JOB_ID", "local")
    started = []
    for st in launch.of_kind(kind):
        host, name = hosts[st["node"]], st["name"]
        rs = RunningStep(step=(models or {}).get(name), host=host, argv=fill(st["argv"], host=host, job_id=job_id, image=image),
                         log=paths.log(name))
        rs.start(launch.env)
        started.append((name, rs))
    return started


# Steps started by runtime/boot.py before submitit unpickled the job, by job dir: run_job, in
# the same process, adopts them.
_STARTED: dict[Path, Optional[EarlyStart]] = {}


def start_early(job_dir: Path) -> None:
    """Start the first steps now, for `take_started` to hand over later in this process."""
    _STARTED[job_dir.resolve()] = start_first(job_dir)


def take_started(job_dir: Path) -> Optional[EarlyStart]:
    """The first steps of `job_dir`: those `start_early` started, else started now."""
    key = job_dir.resolve()
    return _STARTED.pop(key) if key in _STARTED else start_first(job_dir)


def start_first(job_dir: Path) -> Optional[EarlyStart]:
    """Resolve the hosts, write nodes.env and start the first steps; None when anything is not
    as planned (the driver then does it all itself, and diagnoses what is wrong)."""
    t0 = time.time()
    paths = JobPaths(job_dir)
    steps: list[tuple[str, RunningStep]] = []
    try:
        launch = Launch.read(paths.launch)
        hosts = nodes.allocation_hosts()
        if len(hosts) < launch.nodes:
            return None
        hosts = hosts[: launch.nodes]
        addrs = nodes.node_addresses(hosts)
        nodes.write_nodes_env(str(paths.nodes_env), hosts, addrs)
        resolved = time.time()
        _starting(paths, t0, hosts, resolved)
        image = launch.image(job_dir)
        for kind in launch.first:
            steps += launch_steps(launch, kind, paths, hosts, image)
    except Exception:  # whatever failed here fails again in the driver, which diagnoses it
        stop_all([rs for _, rs in steps])
        return None
    return EarlyStart(t0=t0, launch=launch, hosts=hosts, addrs=addrs, resolved_at=resolved, kinds=list(launch.first), steps=steps)


def _starting(paths: JobPaths, t0: float, hosts: list[str], resolved: float) -> None:
    """status.json as job/status.py's Status writes it, for the phase `starting`: the steps are
    about to start and the driver's own status is a moment away."""
    nodes_event = {"t": round(resolved - t0, 3), "event": EventKind.nodes.value, "at": round(resolved, 3), "hosts": hosts}
    atomic_write_json(paths.status, {"phase": Phase.starting.value, "job_id": os.environ.get("SLURM_JOB_ID"), "hosts": hosts,
                                     "started": t0, "updated": time.time(), "events": [nodes_event]})
