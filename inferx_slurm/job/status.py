"""What a run says about itself: its phase, its timeline, why it failed, its results.

The driver writes `status.json` and `summary.json` with these models; `JobHandle`, sweeps,
CI and the CLI read them back with the same models (the phases, fault kinds and timeline
events are job/phases.py's enums). Readers keep fields they do not know (a newer driver's),
so old and new read each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.fsutil import atomic_write_json, read_json
from inferx_slurm.job.phases import FaultKind, Phase
from inferx_slurm.job.slurm import SlurmState


class Event(BaseModel):
    """One timeline entry: `at` is unix time, `t` seconds since the run started (negative for
    what happened before it: the allocation, the interpreter's start)."""

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
    started: Optional[float] = Field(None, description="unix time the run started in the allocation")
    updated: Optional[float] = None
    events: list[Event] = Field(default_factory=list)
    registered: Optional[dict[str, int]] = Field(None, description="ready workers per role (phase ready)")
    engine_dir: Optional[str] = Field(None, description="the job dir whose engines this deployment benchmarks on")
    fault: Optional[FaultKind] = None
    diagnosis: Optional[str] = None
    fault_at: Optional[float] = None
    invalid_points: Optional[list[str]] = Field(None, description="why each invalid point is no result (phase done)")
    slurm_state: Optional[SlurmState] = Field(None, description="Slurm's state, added by JobHandle.status (not in the file)")

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
    """summary.json: one row per benchmark point (benchmark/aiperf.py's `point_row`) and which
    worker served how many requests. `partial` until the run ends well."""

    model_config = ConfigDict(extra="allow")

    name: str
    topology: str
    partial: bool
    total_gpus: int
    rows: list[dict[str, Any]] = Field(default_factory=list)
    served: dict[str, Any] = Field(default_factory=dict)
    invalid_points: int = Field(0, description="rows whose `valid` is false (results/validity.py)")
    kv_capacity: list[dict[str, Any]] = Field(default_factory=list, description="each worker's KV capacity, engine's vs plan's")
    eval: Optional[dict[str, Any]] = Field(None, description="the eval block (runtime/evals.py), when the recipe evaluates")

    @classmethod
    def read(cls, path: Path) -> "Summary":
        return cls.model_validate(read_json(path))

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.as_json())

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
