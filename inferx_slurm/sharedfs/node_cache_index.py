"""What one node's weight cache holds, who uses it, and what may go to make room.

A cache directory ``D`` on a node's local disk holds, per cached model ``NAME``:

* ``D/NAME/``: a complete copy (files, the staged manifest, a ready marker); a directory under
  its final name is always complete, exactly as for a shared stage.
* ``D/.NAME.partial/``: a copy under way or interrupted; never served, resumed by the next copy.
* ``D/.NAME.lock``: held while the model is copied, looked up or evicted (:mod:`locks`).
* ``D/.NAME.served``: when a job last served it: eviction takes the least recently served first.
* ``D/.pins/NAME/*.json``: who uses it. A job's pin holds while Slurm still runs the job; a
  process's pin while that process lives. A model with a live pin is never evicted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from inferx_slurm.sharedfs.locks import LockTimeout, exclusive
from inferx_slurm.sharedfs.stage_manifest import MANIFEST_NAME, is_staged, read_manifest, unique_suffix, write_atomic

PARTIAL = ".partial"
PINS = ".pins"
EVICTING = ".evicting-"
# Node-local locks: a holder on this node that dies is seen at once, so a short lease is enough.
LEASE_S = 30.0


def lock_path(root: Path, name: str) -> Path:
    return root / f".{name}.lock"


def partial_path(root: Path, name: str) -> Path:
    return root / f".{name}{PARTIAL}"


def served_path(root: Path, name: str) -> Path:
    return root / f".{name}.served"


# -- pins ----------------------------------------------------------------------------------


def _proc_start(pid: int) -> Optional[str]:
    # The start time tells a live process from a later one that got its pid.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pin(root: Path, name: str, *, job_id: Optional[str] = None, pid: Optional[int] = None) -> Path:
    """Mark ``name`` as in use by a Slurm job (while it runs) or by a process (while it lives)."""
    if not job_id and pid is None:
        raise ValueError("a pin needs a job id or a pid")
    doc = {"job_id": job_id, "host": socket.gethostname(), "since": time.time()}
    if pid is not None:
        doc.update(pid=pid, start=_proc_start(pid))
    tag = f"job-{job_id}" if job_id else f"pid-{socket.gethostname()}-{pid}"
    path = root / PINS / name / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc) + "\n")
    return path


def slurm_job_running(job_id: str) -> Optional[bool]:
    """True while Slurm knows the job as not ended; None when Slurm cannot be asked."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return bool(proc.stdout.strip())
    # squeue refuses a job id it no longer knows: the job has ended.
    return False if "Invalid job id" in proc.stderr else None


def pin_alive(doc: dict, job_running=slurm_job_running) -> bool:
    if doc.get("pid") is not None and doc.get("host") == socket.gethostname():
        start = _proc_start(int(doc["pid"]))
        return start is not None and start == doc.get("start")
    if doc.get("job_id"):
        # When Slurm cannot say, the model may be in use: keep it.
        return job_running(str(doc["job_id"])) is not False
    return False


def live_pins(root: Path, name: str, job_running=slurm_job_running) -> list[dict]:
    """The pins of ``name`` that still hold; dead ones are removed on the way."""
    live = []
    for path in sorted((root / PINS / name).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if pin_alive(doc, job_running):
            live.append(doc)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return live


def unpin(pin_file: Path) -> None:
    with contextlib.suppress(OSError):
        pin_file.unlink()


# -- entries -------------------------------------------------------------------------------


def mark_served(root: Path, name: str, job_id: Optional[str]) -> None:
    write_atomic(served_path(root, name), json.dumps({"t": time.time(), "job_id": job_id}) + "\n")


def last_served(root: Path, name: str) -> float:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads(served_path(root, name).read_text())["t"])
    with contextlib.suppress(OSError):
        return (root / name).stat().st_mtime
    return 0.0


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


@dataclass
class Entry:
    name: str
    complete: bool
    bytes: int  # what it holds on disk now
    total_bytes: int  # what it holds once complete
    last_served: float
    source: Optional[str] = None
    pins: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "complete": self.complete, "bytes": self.bytes, "total_bytes": self.total_bytes,
                "last_served": self.last_served, "source": self.source,
                "pinned_by": [f"job {p['job_id']}" if p.get("job_id") else f"pid {p.get('pid')} on {p.get('host')}"
                              for p in self.pins]}


def _manifest_total(path: Path) -> tuple[int, Optional[str]]:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = read_manifest(path)
        return int(doc["total_bytes"]), doc.get("staged_from") or doc.get("source")
    return 0, None


def entries(root: Path, job_running=slurm_job_running) -> list[Entry]:
    """Every model in the cache, complete or partial, least recently served first."""
    out: list[Entry] = []
    try:
        children = sorted(root.iterdir())
    except FileNotFoundError:
        return out
    for child in children:
        if not child.is_dir() or child.name == PINS or EVICTING in child.name:
            continue
        if child.name.startswith(".") and child.name.endswith(PARTIAL):
            name = child.name[1 : -len(PARTIAL)]
            total, source = _manifest_total(child) if (child / MANIFEST_NAME).is_file() else (0, None)
            out.append(Entry(name, False, _tree_bytes(child), total, last_served(root, name), source))
        elif not child.name.startswith(".") and is_staged(child):
            total, source = _manifest_total(child)
            out.append(Entry(child.name, True, total, total, last_served(root, child.name), source,
                             live_pins(root, child.name, job_running)))
    out.sort(key=lambda e: (e.last_served, e.name))
    return out


def remove(root: Path, name: str, *, partial: bool = False) -> None:
    """Take ``name`` out of the cache in one rename, then delete it: nothing is ever served half-deleted."""
    src = partial_path(root, name) if partial else root / name
    doomed = root / f".{name}{EVICTING}{unique_suffix()}"
    try:
        os.rename(src, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)
    if not partial:
        for p in (served_path(root, name),):
            with contextlib.suppress(OSError):
                p.unlink()
        shutil.rmtree(root / PINS / name, ignore_errors=True)


def try_evict(root: Path, entry: Entry, job_running=slurm_job_running) -> bool:
    """Evict ``entry`` unless it is pinned or busy (its lock held: being copied or looked up)."""
    try:
        with exclusive(lock_path(root, entry.name), timeout_s=0, purpose="evicting", lease_s=LEASE_S):
            if entry.complete:
                if live_pins(root, entry.name, job_running):
                    return False
                remove(root, entry.name)
            else:
                remove(root, entry.name, partial=True)
            return True
    except LockTimeout:
        return False


def leftovers(root: Path) -> list[Path]:
    """Directories a crashed eviction left half-deleted."""
    with contextlib.suppress(OSError):
        return [p for p in root.iterdir() if EVICTING in p.name]
    return []
