"""One node's copy step of a job with `model.node_cache` (``python -m`` on every node at once).

It brings the staged model into this node's local cache, or finds it there, and leaves its
outcome in ``OUT/nodeN.json`` for the driver. Exit 0 when the node can serve: from its local
copy, or (mode optional) from the shared stage after a warning. Exit 1 when the job must stop:
the cache is required and this node cannot hold the model, or the stage itself is damaged.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from inferx_slurm.fsutil import atomic_write_json
from inferx_slurm.recipe.node_cache import NodeCacheMode, expand_dir, format_bytes
from inferx_slurm.sharedfs.locks import Holder, LockTimeout
from inferx_slurm.sharedfs.node_cache import NodeCacheError, NodeCacheProblem, ensure_local


class NodeOutcome(BaseModel):
    """What one node's step did; the driver reads it back."""

    node: int
    host: str
    dir: str
    path: Optional[str] = None  # the local copy, None where the node reads the shared stage
    reused: bool = False
    files_copied: int = 0
    bytes_copied: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    evicted: list[str] = []
    problem: Optional[str] = None  # a NodeCacheProblem value, or "internal"
    message: Optional[str] = None
    started: float = 0.0
    ended: float = 0.0

    def describe(self) -> str:
        if self.path is None:
            return f"shared copy ({self.problem})"
        if self.reused:
            return "local copy, already there"
        return f"copied {format_bytes(self.bytes_copied)} in {self.seconds:.1f}s"


def say(text: str) -> None:
    print(f"[inferx] node cache: {text}", flush=True)


def run(staged: str, cache_dir: str, *, cap: str, mode: NodeCacheMode, workers: int, out: Path, node: int) -> int:
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    job_id = os.environ.get("SLURM_JOB_ID")
    root = expand_dir(cache_dir, host)
    doc = NodeOutcome(node=node, host=host, dir=root, started=time.time())
    say(f"{host}: {staged} -> {root} (cap {cap}, mode {mode.value}, {workers} files at a time)")

    def waiting(holder: Optional[Holder]) -> None:
        say(f"waiting for {holder.describe() if holder else 'another copy of this model'} to finish")

    rc = 0
    try:
        res = ensure_local(staged, root, cap=cap, workers=workers, job_id=job_id, pid=None if job_id else os.getpid(),
                           on_wait=waiting)
        doc = doc.model_copy(update={"path": str(res.path), "reused": res.reused, "files_copied": res.files_copied,
                                     "bytes_copied": res.bytes_copied, "total_bytes": res.total_bytes,
                                     "seconds": round(res.seconds, 3), "evicted": res.evicted})
        if res.evicted:
            say(f"evicted to make room (least recently served first): {', '.join(res.evicted)}")
        say(f"{res.path}: {doc.describe()} ({res.files_copied} of {res.files_copied + res.files_skipped} files)")
    except (NodeCacheError, LockTimeout) as e:
        problem = e.problem.value if isinstance(e, NodeCacheError) else NodeCacheProblem.unavailable.value
        doc = doc.model_copy(update={"problem": problem, "message": str(e)})
        # A damaged stage is damaged for every reader: no fallback helps.
        fatal = mode is NodeCacheMode.required or problem == NodeCacheProblem.mismatch.value
        rc = 1 if fatal else 0
        say(("FAILED: " if fatal else "falling back to the shared copy: ") + str(e))
    except Exception as e:  # a bug must still leave an outcome, and must not stop an optional cache's job
        doc = doc.model_copy(update={"problem": "internal", "message": f"node cache step error: {e!r}"})
        rc = 1 if mode is NodeCacheMode.required else 0
        say(f"{'FAILED' if rc else 'falling back to the shared copy'}: {e!r}")
    doc = doc.model_copy(update={"ended": time.time()})
    atomic_write_json(out / f"node{node}.json", doc.model_dump(mode="json"))
    return rc


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="node_cache_step", description=__doc__.splitlines()[0])
    ap.add_argument("--staged", required=True, help="the shared stage to copy")
    ap.add_argument("--dir", required=True, help="the node cache dir ({node}: this node's Slurm name)")
    ap.add_argument("--cap", required=True)
    ap.add_argument("--mode", choices=[m.value for m in NodeCacheMode if m is not NodeCacheMode.off], required=True)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", required=True, help="where the outcome goes (the job's node-cache dir)")
    ap.add_argument("--node", type=int, required=True, help="this node's plan index")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return run(a.staged, a.dir, cap=a.cap, mode=NodeCacheMode(a.mode), workers=a.workers, out=out, node=a.node)


if __name__ == "__main__":
    sys.exit(main())
