"""The rendered job as the driver reads it back: its steps and the files they run.

Apart from rendering (job/render.py) so that the driver, which only reads a rendered job,
starts without importing the engines and templates that write one."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.job.phases import StepKind


class Step(BaseModel):
    """One srun step: a script on one node."""

    model_config = ConfigDict(frozen=True)

    name: str  # also the log file stem
    kind: StepKind
    role: Optional[str] = None
    index: Optional[int] = None
    node: int  # plan node index
    node_rank: int = 0
    gpus: int = 0
    script: str  # path relative to the job dir
    leader: bool = True  # the process that registers with discovery (or the only one)
    startup_timeout_s: float = 0.0


class RenderedJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_dir: str
    files: dict[str, str]  # relative path -> content
    steps: list[Step]
    env: dict[str, str]  # what the driver exports to every step
