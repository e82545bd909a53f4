"""A node's own copy of a staged model, on its local disk, kept across jobs and evicted by size.

:func:`ensure_local` makes ``D/NAME`` a complete copy of a shared stage (``model stage``) and
returns it; every node of a job runs it at once, each into its own disk.

* ``NAME`` is the stage's directory name and a key of where it was staged and when, so a
  re-staged model never matches an older local copy.
* The staged manifest is the contract: every file is checked against its size, and against its
  sha256 where the stage recorded one; a mismatch is an error, never a served copy.
* Files are copied concurrently into ``D/.NAME.partial`` exactly as a stage is (each to a
  temporary name, flushed, then renamed), and the whole directory is renamed to ``D/NAME`` last:
  a copy killed at any point is never served, and the next run copies only what is missing.
* Before copying, room is made under the cap by evicting the least recently served models that
  no running job pins (:mod:`node_cache_index`); a model that cannot fit is an error the caller
  turns into a fallback to the shared copy, or a failure.
* A disk that fills up mid-copy is an error naming the disk; the partial copy is deleted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel

from inferx_slurm.errors import InferxError
from inferx_slurm.fsutil import fsync_dir
from inferx_slurm.recipe.node_cache import cap_bytes, format_bytes
from inferx_slurm.sharedfs import node_cache_index as index
from inferx_slurm.sharedfs.locks import Holder, LockTimeout, exclusive
from inferx_slurm.sharedfs.stage_copy import prune as prune_partial, stage_file
from inferx_slurm.sharedfs.stage_manifest import (
    MANIFEST_NAME,
    READY_NAME,
    SourceFile,
    StageError,
    is_staged,
    read_manifest,
    write_atomic,
)

CACHE_LOCK = ".inferx-cache.lock"
# Waiting for another job's copy of the same model on this node (a 400+ GB copy takes a while).
COPY_WAIT_S = 6 * 3600.0
ROOM_WAIT_S = 600.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NodeCacheProblem(str, Enum):
    too_small = "too_small"  # the model does not fit under the cap, even after evicting what may go
    disk_full = "disk_full"  # the disk filled up while copying
    unavailable = "unavailable"  # the cache dir cannot be created, written or read
    mismatch = "mismatch"  # the staged copy does not match its manifest


class NodeCacheError(InferxError):
    exit_code = 1

    def __init__(self, problem: NodeCacheProblem, message: str):
        super().__init__(message)
        self.problem = problem


class NodeCopy(BaseModel):
    path: Path
    name: str
    reused: bool
    files_copied: int
    files_skipped: int
    bytes_copied: int
    total_bytes: int
    seconds: float
    evicted: list[str]


def entry_name(staged: Path, manifest: dict) -> str:
    """The cache's name for a stage: readable, and different for every stage (re-stages included)."""
    key = json.dumps([str(staged), manifest.get("created"), manifest.get("total_bytes")])
    return f"{staged.name}--{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _staged_manifest(staged: Path) -> dict:
    if not is_staged(staged):
        raise NodeCacheError(NodeCacheProblem.mismatch, f"{staged} is not a complete stage (no manifest and ready "
                             "marker); stage the model first (model.stage_dir, or inferx-slurm model stage)")
    try:
        doc = read_manifest(staged)
        doc["files"] = [{"path": str(f["path"]), "size": int(f["size"]), **({"sha256": f["sha256"]} if "sha256" in f else {})}
                        for f in doc["files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NodeCacheError(NodeCacheProblem.mismatch, f"{staged} has an unreadable manifest ({e}); stage the model again") from None
    return doc


def _same_files(final: Path, manifest: dict) -> bool:
    """A complete local copy still holds every file at its staged size (someone may have deleted some)."""
    try:
        return all((final / f["path"]).stat().st_size == f["size"] for f in manifest["files"])
    except OSError:
        return False


def _disk_problem(exc: OSError, root: Path, name: str, done: int, total: int) -> NodeCacheError:
    """The error for a failed write; a disk that filled up also loses the partial copy (the caller holds its lock)."""
    if exc.errno in NO_SPACE:
        index.remove(root, name, partial=True)
        return NodeCacheError(NodeCacheProblem.disk_full, (
            f"the disk of {root} filled up while copying {name} ({format_bytes(done)} of {format_bytes(total)} copied); "
            "the partial copy was deleted and nothing of it is served: free space there, or lower model.node_cache.cap"))
    return NodeCacheError(NodeCacheProblem.unavailable, f"cannot copy into {root}: {exc.strerror or exc} "
                          f"({getattr(exc, 'filename', None) or root}); check the node's local disk")


def make_room(root: Path, name: str, total: int, have: int, cap: Union[int, str],
              job_running: Callable[[str], Optional[bool]] = index.slurm_job_running) -> list[str]:
    """Evict until ``name`` (``total`` bytes, ``have`` of them already here) fits; returns what went."""
    disk = shutil.disk_usage(root)
    limit = cap_bytes(cap, disk.total)
    if total > limit:
        raise NodeCacheError(NodeCacheProblem.too_small, (
            f"{name} needs {format_bytes(total)} but model.node_cache.cap ({cap}) allows {format_bytes(limit)} "
            f"on {root} (a {format_bytes(disk.total)} disk); raise the cap or use a larger disk"))
    evicted: list[str] = []
    with exclusive(root / CACHE_LOCK, timeout_s=ROOM_WAIT_S, purpose=f"making room for {name}", lease_s=index.LEASE_S):
        while True:
            others = [e for e in index.entries(root, job_running) if e.name != name]
            # A copy under way will grow to its full size: count it so, and leave it the disk it needs.
            used = sum(e.total_bytes if not e.complete else e.bytes for e in others)
            growing = sum(max(e.total_bytes - e.bytes, 0) for e in others if not e.complete)
            free = shutil.disk_usage(root).free
            if used + total <= limit and free >= (total - have) + growing:
                return evicted
            # Interrupted copies first (nobody serves them), then the least recently served.
            for e in [e for e in others if not e.complete] + [e for e in others if e.complete]:
                if index.try_evict(root, e, job_running):
                    evicted.append(e.name)
                    break
            else:
                held = [e.name for e in others if e.pins] or [e.name for e in others if not e.complete]
                raise NodeCacheError(NodeCacheProblem.too_small, (
                    f"{name} ({format_bytes(total)}) does not fit in {root}: {format_bytes(used)} held"
                    + (f" by models in use ({', '.join(held)})" if held else "")
                    + f", {format_bytes(free)} free, cap {cap} = {format_bytes(limit)}; raise model.node_cache.cap, "
                    "free the disk, or wait for those jobs"))


def ensure_local(
    staged: Union[str, Path],
    root: Union[str, Path],
    *,
    cap: Union[int, str],
    workers: int = 8,
    job_id: Optional[str] = None,
    pid: Optional[int] = None,
    timeout_s: float = COPY_WAIT_S,
    on_wait: Optional[Callable[[Optional[Holder]], None]] = None,
    job_running: Callable[[str], Optional[bool]] = index.slurm_job_running,
) -> NodeCopy:
    """Make ``root/NAME`` a complete local copy of the stage at ``staged``, pinned for ``job_id``
    (or process ``pid``; neither: not pinned), and return it. Raises :class:`NodeCacheError` when it cannot."""
    start = time.monotonic()
    staged, root = Path(staged).absolute(), Path(root)
    manifest = _staged_manifest(staged)
    name = entry_name(staged, manifest)
    total = sum(f["size"] for f in manifest["files"])
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NodeCacheError(NodeCacheProblem.unavailable, f"cannot create the node cache {root}: {e.strerror}; "
                             "check model.node_cache.dir and the node's local disk") from None
    final, partial = root / name, index.partial_path(root, name)

    def result(copied: int, nbytes: int, evicted: list[str]) -> NodeCopy:
        return NodeCopy(path=final, name=name, reused=nbytes == 0 and copied == 0, files_copied=copied,
                        files_skipped=len(manifest["files"]) - copied, bytes_copied=nbytes, total_bytes=total,
                        seconds=time.monotonic() - start, evicted=evicted)

    try:
        with exclusive(index.lock_path(root, name), timeout_s=timeout_s, purpose=f"copying {staged}",
                       lease_s=index.LEASE_S, on_wait=on_wait):
            pin_file = index.pin(root, name, job_id=job_id, pid=pid) if job_id or pid is not None else None
            try:
                if is_staged(final):
                    if _same_files(final, manifest):
                        index.mark_served(root, name, job_id)
                        return result(0, 0, [])
                    os.rename(final, partial)  # damaged by hand: resume it like an interrupted copy
                have = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial.is_dir() else 0
                evicted = make_room(root, name, total, have, cap, job_running)
                copied, nbytes = _copy(staged, partial, manifest, workers, root, name, total)
                write_atomic(partial / READY_NAME, json.dumps({"ready": time.time(), "host": socket.gethostname(),
                                                               "staged_from": str(staged)}) + "\n")
                fsync_dir(partial)
                os.rename(partial, final)
                fsync_dir(root)
                index.mark_served(root, name, job_id)
                return result(copied, nbytes, evicted)
            except (NodeCacheError, LockTimeout):
                if pin_file is not None:
                    index.unpin(pin_file)
                raise
            except OSError as e:
                if pin_file is not None:
                    index.unpin(pin_file)
                raise _disk_problem(e, root, name, 0, total) from None
    except (NodeCacheError, LockTimeout):
        raise
    except OSError as e:  # the lock itself: the disk refuses even a small file
        raise NodeCacheError(NodeCacheProblem.unavailable, f"cannot use the node cache {root}: {e.strerror or e}; "
                             "check model.node_cache.dir and the node's local disk") from None


def _copy(staged: Path, partial: Path, manifest: dict, workers: int, root: Path, name: str, total: int) -> tuple[int, int]:
    partial.mkdir(exist_ok=True)
    # The manifest goes in first: the cache counts a copy under way at its full size.
    write_atomic(partial / MANIFEST_NAME, json.dumps({**manifest, "staged_from": str(staged)}, indent=1) + "\n")
    prune_partial(partial, {f["path"] for f in manifest["files"]})
    done = 0

    def one(f: dict) -> tuple[bool, int]:
        nonlocal done
        src = staged / f["path"]
        try:
            st = src.stat()
        except FileNotFoundError:
            raise NodeCacheError(NodeCacheProblem.mismatch, f"{src} is in the staged manifest but missing; stage the model again") from None
        if st.st_size != f["size"]:
            raise NodeCacheError(NodeCacheProblem.mismatch, f"{src} is {st.st_size} bytes but the staged manifest says "
                                 f"{f['size']}; the stage was changed after staging: stage the model again")
        sf = SourceFile(rel=f["path"], path=src, size=f["size"], mtime=int(st.st_mtime))
        want = f.get("sha256")
        try:
            copied, n, digest = stage_file(sf, partial, checksum=want is not None)
        except StageError as e:
            raise NodeCacheError(NodeCacheProblem.mismatch, str(e)) from None
        if want is not None and digest != want:
            (partial / f["path"]).unlink(missing_ok=True)
            raise NodeCacheError(NodeCacheProblem.mismatch, f"{src}: its sha256 differs from the staged manifest's; "
                                 "the staged copy is damaged: stage the model again")
        done += n
        return copied, n

    # Largest first, so one big shard does not start last and leave the pool idle.
    order = sorted(manifest["files"], key=lambda f: f["size"], reverse=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        outcomes = list(pool.map(one, order))
    except OSError as e:
        pool.shutdown(wait=True, cancel_futures=True)
        raise _disk_problem(e, root, name, done, total) from None
    finally:
        # After a failure, the files not yet started are not worth copying.
        pool.shutdown(wait=True, cancel_futures=True)
    return sum(c for c, _ in outcomes), sum(n for _, n in outcomes)


class Pruned(BaseModel):
    evicted: list[str]
    kept: list[str]  # asked for, but in use (pinned by a running job, or being copied)
    freed_bytes: int


def prune(root: Union[str, Path], *, names: Optional[list[str]] = None, everything: bool = False,
          cap: Union[int, str, None] = None,
          job_running: Callable[[str], Optional[bool]] = index.slurm_job_running) -> Pruned:
    """Clean one node's cache: always the leftovers of crashed copies and evictions, then the models
    ``names``, or every model (``everything``), or the least recently served until it is within ``cap``.
    A model a running job pins, or one being copied, is kept."""
    root = Path(root)
    evicted, kept, freed = [], [], 0
    if not root.is_dir():
        return Pruned(evicted=[], kept=[], freed_bytes=0)
    with exclusive(root / CACHE_LOCK, timeout_s=ROOM_WAIT_S, purpose="pruning", lease_s=index.LEASE_S):
        for leftover in index.leftovers(root):
            shutil.rmtree(leftover, ignore_errors=True)
        ents = index.entries(root, job_running)
        wanted = [e for e in ents if not e.complete]  # interrupted copies; a copy under way is busy and stays
        if names:
            unknown = sorted(set(names) - {e.name for e in ents})
            if unknown:
                raise NodeCacheError(NodeCacheProblem.unavailable, f"{root} holds no model {', '.join(unknown)}; "
                                     "see `inferx-slurm model cache ls`")
            wanted += [e for e in ents if e.complete and e.name in names]
        elif everything:
            wanted += [e for e in ents if e.complete]
        for e in wanted:
            if index.try_evict(root, e, job_running):
                evicted.append(e.name)
                freed += e.bytes
            elif e.complete or names:
                kept.append(e.name)
        if cap is not None:
            limit = cap_bytes(cap, shutil.disk_usage(root).total)
            left = [e for e in index.entries(root, job_running)]
            used = sum(e.total_bytes if not e.complete else e.bytes for e in left)
            for e in [e for e in left if e.complete]:  # least recently served first
                if used <= limit:
                    break
                if index.try_evict(root, e, job_running):
                    evicted.append(e.name)
                    freed += e.bytes
                    used -= e.bytes
                else:
                    kept.append(e.name)
    return Pruned(evicted=evicted, kept=kept, freed_bytes=freed)
