"""What a run says about itself: its phase, its timeline, why it failed, its results.

The driver writes `status.json` and `summary.json` with these models; `JobHandle`, sweeps,
CI and the CLI read them back with the same models. Phases, fault kinds and timeline events
are enums of strings, so the JSON holds plain strings and a reader compares either.
Readers keep fields they do not know (a newer driver's), so old and new read each other.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.fsutil import atomic_write_json, read_json


class Phase(str, Enum):
    pending = "pending"  # no status.json yet: queued, or the driver has not started
    starting = "starting"
    ready = "ready"
    benchmarking = "benchmarking"
    done = "done"
    failed = "failed"

    @property
    def ended(self) -> bool:
        return self in (Phase.done, Phase.failed)


class FaultKind(str, Enum):
    """Why a run failed; CI maps each to an exit code (ci/report.py)."""

    exited = "exited"  # a step's process exited
    not_ready = "not_ready"  # workers did not register within their startup timeout
    node_down = "node_down"
    stalled = "stalled"  # the benchmark made no progress
    cancelled = "cancelled"  # scancel, a signal, or the time-limit warning
    infra = "infra"  # the allocation or the discovery servers
    install = "install"  # the Dynamo install into the containers
    time_limit = "time_limit"  # stopped before Slurm's limit, with partial results
    client = "client"  # the benchmark client crashed or wrote nothing
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
    step_started = "step started"  # one srun step launched
    engines_started = "engines started"
    preflight = "preflight"  # a worker's identity probe reported (its report's time)
    registered = "registered"  # the frontend's count of ready workers changed
    ready = "ready"
    engines_shared = "engines shared"  # a packed deployment benchmarks on engines already up
    benchmark = "benchmark"  # a benchmark point started
    point_done = "point done"
    torn_down = "torn down"
    done = "done"
    failed = "failed"
    not_run = "not run"


class Event(BaseModel):
    """One timeline entry: `at` is unix time, `t` seconds since the driver started (negative
    for what happened before it: the allocation, the interpreter's start)."""

    model_config = ConfigDict(extra="allow")

    t: float
    event: str
    at: Optional[float] = None


class Status(BaseModel):
    """status.json: where the run is, and every event so far."""

    model_config = ConfigDict(extra="allow")

    phase: Phase = Phase.pending
    job_id: Optional[str] = None
    hosts: list[str] = Field(default_factory=list)
    started: Optional[float] = Field(None, description="unix time the driver started")
    updated: Optional[float] = None
    events: list[Event] = Field(default_factory=list)
    registered: Optional[dict[str, int]] = Field(None, description="ready workers per role (phase ready)")
    engine_dir: Optional[str] = Field(None, description="the job dir whose engines this deployment benchmarks on")
    fault: Optional[FaultKind] = None
    diagnosis: Optional[str] = None
    fault_at: Optional[float] = None
    slurm_state: Optional[str] = Field(None, description="Slurm's state, added by JobHandle.status (not in the file)")

    @classmethod
    def read(cls, path: Path) -> "Status":
        """The file's status, or `pending` when the driver has written none yet."""
        return cls.model_validate(read_json(path)) if path.exists() else cls(phase=Phase.pending)

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.as_json())

    def as_json(self) -> dict[str, Any]:
        """The keys that were set, as the file holds them."""
        return self.model_dump(mode="json", exclude_unset=True)

    def event(self, kind: str) -> Optional[Event]:
        return next((e for e in self.events if e.event == kind), None)


class Summary(BaseModel):
    """summary.json: one row per benchmark point (benchmark/aiperf.py's `summarize`) and which
    worker served how many requests. `partial` until the run ends well."""

    model_config = ConfigDict(extra="allow")

    name: str
    topology: str
    partial: bool
    total_gpus: int
    rows: list[dict[str, Any]] = Field(default_factory=list)
    served: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Summary":
        return cls.model_validate(read_json(path))

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.as_json())

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
