"""How each step of a job is started: its srun command line, made when the job dir is prepared
(`launch.json`), with placeholders for what only the allocation knows: the host, the Slurm
job id and the imported image's path.

The driver starts steps from this file alone, before it imports anything heavy, so the
engines start loading while the driver's own interpreter is still starting. Standard library
only, for that reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

HOST = "{inferx:host}"
JOB_ID = "{inferx:job_id}"
IMAGE = "{inferx:image}"


def fill(argv: list[str], *, host: str, job_id: str, image: Optional[str]) -> list[str]:
    """A step's srun command line for this allocation."""
    out = []
    for a in argv:
        a = a.replace(HOST, host).replace(JOB_ID, job_id)
        out.append(a.replace(IMAGE, image) if image is not None else a)
    return out


class Launch:
    """launch.json as read inside the allocation (see job/deployment.py's LaunchPlan)."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.first: list[str] = doc["first"]
        self.nodes: int = doc["nodes"]
        self.env: dict[str, str] = doc["env"]
        self.steps: list[dict[str, Any]] = doc["steps"]

    @classmethod
    def read(cls, path: Path) -> "Launch":
        return cls(json.loads(Path(path).read_text()))

    def image(self, job_dir: Path) -> Optional[str]:
        """The image the container steps run: the imported .sqsh (image.json), else the URI."""
        from inferx_slurm.job.paths import JobPaths

        imported = JobPaths(job_dir).image
        return json.loads(imported.read_text())["path"] if imported.exists() else self.doc.get("image")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [s for s in self.steps if s["kind"] == kind]
