"""Log lines after which a live engine will never become ready: seen as they are written, so
the run fails in seconds instead of at the start-up time-out (minutes to half an hour).

An engine process can outlive what it needs: vLLM's NIXL side-channel listener is a thread
that binds the worker's side-channel port once the KV cache is registered; when that bind
fails (another process took the port after the step checked it) the thread dies with the
error and the engine waits for it forever, alive and never registered.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from inferx_slurm.job.phases import FaultKind, StepKind
from inferx_slurm.runtime.steps import RunningStep
from inferx_slurm.runtime.watchdog import Fault

# (substring of a log line, what it means and what to do)
FATAL = [
    ("Exception in thread nixl_handshake_listener",
     "its NIXL side-channel listener died at start-up (the engine then waits for it forever and never registers); "
     "when the error is 'Address already in use', another process took the worker's side-channel port "
     "(VLLM_NIXL_SIDE_CHANNEL_PORT, from the worker's port block) after the step checked it: stop that process, or "
     "move the block (placement.port_base, or leave it out for free ports)"),
]
# What of a log is read per scan at most: a burst of output is read over several polls.
CHUNK = 1 << 20


# The last line of a Python traceback: the exception and its message ("zmq.error.ZMQError: ...").
_EXCEPTION = re.compile(r"^\s*(\([^)]*\)\s*)?[A-Za-z_][\w.]*(Error|Exception)\b[^:]*:")
# How long a matched line waits for its traceback's last line to be written.
TRACEBACK_WAIT_S = 3.0


@dataclass
class _Pending:
    step: RunningStep
    line: str
    why: str
    at: float


@dataclass
class FatalLineWatch:
    offsets: dict[Path, int] = field(default_factory=dict)
    partial: dict[Path, str] = field(default_factory=dict)
    pending: Optional[_Pending] = None

    def scan(self, steps: list[RunningStep]) -> Optional[Fault]:
        """A fault once a fatal line and the exception that follows it are written (or a few
        seconds after the line, without one)."""
        for s in steps:
            if s.step.kind != StepKind.worker:
                continue
            for line in self._new_lines(s.log):
                p = self.pending
                if p is not None and p.step is s and _EXCEPTION.match(line):
                    return self._fault(p, line.strip())
                match = next((why for needle, why in FATAL if needle in line), None)
                if match and p is None:
                    self.pending = _Pending(s, line.strip(), match, time.time())
        if self.pending is not None and time.time() - self.pending.at > TRACEBACK_WAIT_S:
            return self._fault(self.pending, None)
        return None

    @staticmethod
    def _fault(p: _Pending, exception: Optional[str]) -> Fault:
        who = f"{p.step.step.role} worker {p.step.step.index}"
        said = f"{p.line} ... {exception}" if exception else p.line
        return Fault(FaultKind.engine_fatal, p.step, f"{who} on host {p.step.host}: {p.why}. Its log: {said}", host=p.step.host)

    def _new_lines(self, path: Path) -> list[str]:
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                chunk = f.read(CHUNK)
        except OSError:
            return []
        self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
        text = self.partial.pop(path, "") + chunk.decode(errors="replace")
        lines = text.split("\n")
        self.partial[path] = lines.pop()  # a line still being written
        return lines
