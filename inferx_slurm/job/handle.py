"""A submitted deployment: wait for it, follow its logs, cancel it, read its results."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from inferx_slurm.errors import InferxError
from inferx_slurm.fsutil import read_json
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import Phase
from inferx_slurm.job.slurm import ENDED_STATES, SlurmState, SlurmWatcher, default_watcher
from inferx_slurm.job.status import Status, Summary


class JobHandle:
    """A submitted deployment. Wait for it, follow its logs, cancel it, read its results."""

    def __init__(self, job_id: str, results_dir: Path, *, env: Optional[dict[str, str]] = None, shared: bool = False,
                 watcher: Optional[SlurmWatcher] = None):
        self.job_id = str(job_id)
        # A packed deployment shares its job with others: its end is its own status, not the job's.
        self.shared = shared
        self.results_dir = Path(results_dir)
        self.paths = JobPaths(self.results_dir)
        self.env = env
        # Registered now, so the first handle to ask polls for every handle made before it.
        self.watcher = watcher or default_watcher(env)
        self.watcher.register(self.job_id)

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r}, results_dir={str(self.results_dir)!r})"

    def _run(self, argv: list[str]) -> str:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(self.env or {})}, timeout=30).stdout

    def slurm_state(self) -> SlurmState:
        return self.watcher.state(self.job_id)

    def status(self) -> Status:
        """The driver's status.json (pending before it writes one) with Slurm's state."""
        st = Status.read(self.paths.status)
        st.slurm_state = self.slurm_state()
        return st

    def finished(self) -> bool:
        """The deployment's run is over: the driver ended it, or Slurm ended the job."""
        st = self.status()
        return st.phase.ended or st.slurm_state in ENDED_STATES

    def done(self) -> bool:
        return self.slurm_state() in ENDED_STATES

    def wait(self, timeout: Optional[float] = None, poll_s: float = 1.0,
             on_status: Optional[Callable[[Status], None]] = None) -> dict[str, Any]:
        """Block until the job ends; return the summary. Raises RunError if the run failed."""
        deadline = None if timeout is None else time.time() + timeout
        last_phase = None
        while True:
            st = self.status()
            if on_status and st.phase != last_phase:
                on_status(st)
                last_phase = st.phase
            if st.slurm_state in ENDED_STATES or st.phase.ended:
                if st.phase.ended and st.slurm_state not in ENDED_STATES and not self.shared:
                    # The driver has finished its work; give Slurm a moment to record the end.
                    self.wait_slurm_end(10)
                    st = self.status()
                break
            if deadline and time.time() > deadline:
                raise TimeoutError(f"job {self.job_id} still {st.slurm_state} after {timeout} s")
            time.sleep(poll_s)
        if st.phase is Phase.done:
            return self.results()
        diag = st.diagnosis or (f"job {self.job_id} ended {st.slurm_state} before the driver finished (phase {st.phase.value}); "
                                f"see {self.paths.submitit}")
        raise RunError(diag, self)

    def wait_slurm_end(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end and self.slurm_state() not in ENDED_STATES:
            time.sleep(0.5)

    def cancel(self) -> None:
        self._run(["scancel", self.job_id])

    def results(self) -> dict[str, Any]:
        """summary.json as written (rows, served requests, partial)."""
        return read_json(self.paths.summary)

    def summary(self) -> Summary:
        return Summary.read(self.paths.summary)

    def log_files(self, role: Optional[str] = None, index: Optional[int] = None) -> list[Path]:
        logs = sorted(self.paths.logs.glob("*.log"))
        if role:
            prefix = f"{role}-{index}." if index is not None else f"{role}"
            logs = [p for p in logs if p.name.startswith(prefix)]
        return logs

    def follow(self, role: Optional[str] = None, index: Optional[int] = None, poll_s: float = 0.5) -> Iterator[str]:
        """Yield log lines as they are written, until the job ends."""
        offsets: dict[Path, int] = {}
        while True:
            finished = self.done()
            for path in self.log_files(role, index):
                with open(path, errors="replace") as f:
                    f.seek(offsets.get(path, 0))
                    for line in f:
                        yield f"{path.stem}: {line.rstrip()}"
                    offsets[path] = f.tell()
            if finished:
                return
            time.sleep(poll_s)


class RunError(InferxError):
    exit_code = 1

    def __init__(self, diagnosis: str, handle: JobHandle):
        super().__init__(diagnosis)
        self.handle = handle


def attach(results_dir: str | Path, env: Optional[dict[str, str]] = None) -> JobHandle:
    paths = JobPaths(results_dir)
    if not paths.job.exists():
        raise InferxError(f"{paths.root} holds no submitted job (no {JobPaths.JOB}); pass a results dir that `launch` made")
    doc = read_json(paths.job)
    return JobHandle(doc["job_id"], paths.root, env=env, shared="pack" in doc)
