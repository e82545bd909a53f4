"""srun steps started by the driver: start, poll, stop, and read their logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from inferx_slurm.fsutil import last_lines
from inferx_slurm.job.paths import srun_err

if TYPE_CHECKING:  # the driver starts its first steps before it imports the models
    from inferx_slurm.job.rendered import Step

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class RunningStep:
    step: "Step"  # None until the driver has read rendered.json, for a step started before that
    host: str
    argv: list[str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0
    ended: Optional[float] = None
    returncode: Optional[int] = None
    stopping: bool = field(default=False)

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # srun writes the task's output to --output; its own complaints go to a side file.
        err = open(srun_err(self.log), "ab")
        self.proc = subprocess.Popen(
            self.argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            start_new_session=True,
        )
        err.close()
        self.started = time.time()

    def poll(self) -> Optional[int]:
        if self.proc is None or self.returncode is not None:
            return self.returncode
        rc = self.proc.poll()
        if rc is not None:
            self.returncode, self.ended = rc, time.time()
        return rc

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass

    def tail(self, lines: int = 20) -> list[str]:
        return [_ANSI.sub("", line) for line in last_lines([self.log, srun_err(self.log)], lines)]


def describe_exit(rc: Optional[int]) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    if rc > 128 and rc - 128 < 65:
        try:
            return f"exit code {rc} (signal {signal.Signals(rc - 128).name})"
        except ValueError:
            pass
    return f"exit code {rc}"


def stop_all(steps: list[RunningStep], grace_s: float = 10.0, dead_hosts: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """SIGTERM every step (srun forwards it to the task), then SIGKILL what is left."""
    for s in steps:
        s.stopping = True
        s.signal(signal.SIGKILL if s.host in dead_hosts else signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(s.alive for s in steps if s.host not in dead_hosts):
        time.sleep(0.2)
    for s in steps:
        s.signal(signal.SIGKILL)
    for s in steps:
        if s.proc is not None:
            try:
                s.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            s.poll()
