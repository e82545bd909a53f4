"""Slurm job states, read for many jobs at once.

Every handle asking Slurm about its own job costs one ``squeue`` (and, once the job has left
the queue, one ``sacct``) per handle per poll; a sweep of N jobs polled every second is N
controller and N database queries a second. A :class:`SlurmWatcher` asks once for every job
registered with it: one ``squeue`` for all of them, then one ``sacct`` for those the queue no
longer lists, and keeps the answer for a short while so the handles of one polling loop share
it.

Ids are kept in the form Slurm prints them and submitit hands them out: ``123`` for a job,
``123_4`` for an array task. ``squeue -r`` prints one line per array task (without it, pending
tasks come as one ``123_[4-9]`` line); sacct's JobID column is in the same form, while its
JobIDRaw is each task's own number (task ``123_4`` may be ``127``), so JobID is what is read.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from enum import Enum


class SlurmState(str, Enum):
    """A job's state as squeue/sacct name it, and UNKNOWN when neither knows the id."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    RESIZING = "RESIZING"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    REVOKED = "REVOKED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> SlurmState:
        """sacct's ``CANCELLED by 1000`` is CANCELLED; a state this Slurm has and we do not is UNKNOWN."""
        word = text.strip().split(" ", 1)[0].rstrip("+").upper()
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN


TERMINAL_STATES = frozenset({
    SlurmState.COMPLETED, SlurmState.FAILED, SlurmState.CANCELLED, SlurmState.TIMEOUT, SlurmState.NODE_FAIL,
    SlurmState.OUT_OF_MEMORY, SlurmState.PREEMPTED, SlurmState.BOOT_FAIL, SlurmState.DEADLINE,
})
# COMPLETING: the job's processes are gone and Slurm is cleaning up (for a dead node, until
# it is marked down). The run is over.
ENDED_STATES = TERMINAL_STATES | {SlurmState.COMPLETING}
# States a job does not leave on its own, so they are not asked for again. A node failure or a
# preemption can requeue the job, so those are asked for until the handle stops asking.
FINAL_STATES = TERMINAL_STATES - {SlurmState.NODE_FAIL, SlurmState.PREEMPTED}

_BRACKETS = re.compile(r"^(\d+)_\[([^\]]*)\]$")


def expand_ids(job_id: str) -> list[str]:
    """``123_[4-6,9%2]`` -> 123_4, 123_5, 123_6, 123_9 (``%N`` is the array's throttle); other ids as they are."""
    m = _BRACKETS.match(job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%", 1)[0]
    out = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return [job_id]
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_squeue(text: str) -> dict[str, SlurmState]:
    """``squeue -h -r -o '%i %T'`` lines -> {job id: state}."""
    states: dict[str, SlurmState] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2:
            continue
        for job_id in expand_ids(words[0]):
            states[job_id] = SlurmState.parse(words[1])
    return states


def parse_sacct(text: str) -> dict[str, SlurmState]:
    """``sacct -X -n -P -o JobID,State`` lines -> {job id: state}; a later line (a requeued
    job's newer record) wins."""
    states: dict[str, SlurmState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 2 or not parts[0].strip():
            continue
        for job_id in expand_ids(parts[0].strip()):
            states[job_id] = SlurmState.parse(parts[1])
    return states


Runner = Callable[[list[str], Mapping[str, str]], subprocess.CompletedProcess | None]


def run_command(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess | None:
    """Run a Slurm client; None when it could not run or answer in time (the caller keeps what it knew)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


class SlurmWatcher:
    """The states of every job registered with it, from one squeue and at most one sacct per poll.

    `env` is the environment of the submitting side (SLURM_CONF, PATH): the one the jobs were
    submitted into. A state is at most `max_age_s` old; asking for a job not yet covered by the
    last poll polls again, for every registered job.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, max_age_s: float = 1.0, run: Runner = run_command):
        self.env = dict(env or {})
        self.max_age_s = max_age_s
        self._run = run
        self._ids: dict[str, None] = {}  # registration order, for a stable command line
        self._states: dict[str, SlurmState] = {}
        self._final: dict[str, SlurmState] = {}
        self._polled_at: float | None = None
        self._covered: set[str] = set()
        self._lock = threading.Lock()

    def register(self, *job_ids: str) -> None:
        with self._lock:
            for j in job_ids:
                self._ids.setdefault(str(j), None)

    def state(self, job_id: str) -> SlurmState:
        job_id = str(job_id)
        self.register(job_id)
        with self._lock:
            if job_id in self._final:
                return self._final[job_id]
            fresh = self._polled_at is not None and time.monotonic() - self._polled_at < self.max_age_s
            if not fresh or job_id not in self._covered:
                self._poll()
            return self._states.get(job_id, SlurmState.UNKNOWN)

    def _poll(self) -> None:
        ids = [j for j in self._ids if j not in self._final]
        self._covered = set(ids)
        if not ids:
            self._polled_at = time.monotonic()
            return
        seen: dict[str, SlurmState] = {}
        q = self._run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T"], self.env)
        queue_answered = q is not None and (q.returncode == 0 or "Invalid job id" in (q.stderr or ""))
        if q is not None and q.returncode == 0:
            seen.update({j: s for j, s in parse_squeue(q.stdout).items() if j in self._covered})
        gone = [j for j in ids if j not in seen]
        if gone:
            a = self._run(["sacct", "-X", "-n", "-P", "-j", ",".join(gone), "-o", "JobID,State"], self.env)
            acct = parse_sacct(a.stdout) if a is not None and a.returncode == 0 else {}
            for j in gone:
                if j in acct:
                    seen[j] = acct[j]
                elif queue_answered:
                    # Out of the queue and not (yet) in the accounting: a wrong id, a job the
                    # database has not recorded yet, or a cluster without accounting.
                    seen[j] = SlurmState.UNKNOWN
        # A queue that did not answer (controller busy) leaves the last state known.
        self._states.update(seen)
        # Aged from the answer, not the question: on a loaded machine the two clients can take
        # longer than max_age_s, and every handle of the loop must still share this answer.
        self._polled_at = time.monotonic()
        for j, s in seen.items():
            if s in FINAL_STATES:
                self._final[j] = s


_DEFAULT: dict[tuple[tuple[str, str], ...], SlurmWatcher] = {}
_DEFAULT_LOCK = threading.Lock()


def default_watcher(env: Mapping[str, str] | None = None) -> SlurmWatcher:
    """The process's watcher for jobs submitted with this environment (one per cluster)."""
    key = tuple(sorted((env or {}).items()))
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = SlurmWatcher(env)
        return _DEFAULT[key]
