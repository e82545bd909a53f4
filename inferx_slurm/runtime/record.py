"""What the driver records about a run, in one place: the timeline and phase (status.json),
the results (summary.json), the diagnosis, and the driver's own log lines (the job's stdout,
which submitit keeps in the job's submitit dir)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from inferx_slurm.fsutil import atomic_write
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import EventKind, FaultKind, Phase
from inferx_slurm.job.status import Event, Status, Summary


def log(line: str) -> None:
    """A line of the driver's log: the job's stdout."""
    sys.stdout.write(f"[inferx] {line}\n")
    sys.stdout.flush()


def process_started(pid: int) -> Optional[float]:
    """When a process started (unix time, to a clock tick), from /proc; None where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class RunRecord:
    """The timeline, status and summary of one deployment's run, written as they change."""

    def __init__(self, paths: JobPaths, t0: float):
        self.paths = paths
        self.t0 = t0
        self.events: list[Event] = []
        self.hosts: list[str] = []

    def event(self, kind: EventKind, /, at: Optional[float] = None, quiet: bool = False, **extra: Any) -> None:
        """Add `kind` to the timeline at `at` (now by default); `extra` is its data (a failure's
        fault `kind` among them); `quiet` keeps it out of the log."""
        at = time.time() if at is None else at
        self.events.append(Event(t=round(at - self.t0, 3), event=kind.value, at=round(at, 3), **extra))
        if len(self.events) > 1 and (self.events[-2].at or 0.0) > at:
            self.events.sort(key=lambda e: e.at or 0.0)  # an event recorded after the fact
        if not quiet:
            log(f"+{at - self.t0:7.2f}s {kind.value} {extra if extra else ''}")

    def before_start(self) -> None:
        """What happened before the driver ran: Slurm starting the batch script (the driver's
        parent) and the driver's interpreter starting, so launch overhead shows in the timeline."""
        for kind, pid in ((EventKind.allocation, os.getppid()), (EventKind.interpreter, os.getpid())):
            at = process_started(pid)
            if at is not None and at <= self.t0:
                self.event(kind, at=at, quiet=True)

    def status(self, phase: Phase, **extra: Any) -> None:
        Status(phase=phase, job_id=os.environ.get("SLURM_JOB_ID"), hosts=self.hosts, started=self.t0, updated=time.time(),
               events=self.events, **extra).write(self.paths.status)

    def failed(self, fault: FaultKind, diagnosis: str, **extra: Any) -> None:
        """The run's end as a failure: its diagnosis and its last status."""
        atomic_write(self.paths.diagnosis, diagnosis + "\n")
        self.status(Phase.failed, fault=fault, diagnosis=diagnosis, **extra)

    def summary(self, summary: Summary) -> None:
        summary.write(self.paths.summary)
