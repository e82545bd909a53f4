"""Copying a stage's files: each to a private temporary name, renamed into place only once
complete and flushed, so after any crash every file under its real name is whole; and Lustre
striping of the staging directory before any file is written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from inferx_slurm.sharedfs.stage_manifest import OWN_FILES, TMP_MARK, SourceFile, StageError, unique_suffix

CHUNK = 8 << 20
# Progressive layout: small files (configs, tokenizers) on one OST, big shards over all of them.
LUSTRE_LAYOUT = ("-E", "64M", "-c", "1", "-S", "1M", "-E", "-1", "-c", "-1", "-S", "4M")
LUSTRE_FALLBACK_LAYOUT = ("-c", "-1", "-S", "4M")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_with_hash(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def complete_copy(target: Path, sf: SourceFile) -> bool:
    # Files reach their real name only once whole, so size and mtime (set from the source
    # when copied) tell a finished copy from a changed source.
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    return st.st_size == sf.size and int(st.st_mtime) == sf.mtime


def stage_file(sf: SourceFile, partial: Path, checksum: bool) -> tuple[bool, int, str | None]:
    target = partial / sf.rel
    if complete_copy(target, sf):
        return False, 0, sha256_of(target) if checksum else None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}{TMP_MARK}{unique_suffix()}")
    try:
        if checksum:
            digest: str | None = copy_with_hash(sf.path, tmp)
        else:
            shutil.copyfile(sf.path, tmp)
            digest = None
        fd = os.open(tmp, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            os.fsync(fd)
        finally:
            os.close(fd)
        if size != sf.size:
            raise StageError(
                f"{sf.path} changed size while it was copied ({sf.size} -> {size} bytes); "
                "wait until whatever writes the checkpoint has finished, then stage again"
            )
        os.utime(tmp, (time.time(), sf.mtime))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True, sf.size, digest


def prune(partial: Path, keep: set[str]) -> None:
    # Everything inside .NAME.partial is ours: leftovers of a crashed copy, or files the
    # source no longer has.  Removing them makes the stage an exact copy of the source.
    for dirpath, dirnames, filenames in os.walk(partial, topdown=False):
        base = Path(dirpath)
        for fname in filenames:
            rel = (base / fname).relative_to(partial).as_posix()
            if rel not in keep and rel not in OWN_FILES:
                (base / fname).unlink()
        for dname in dirnames:
            with contextlib.suppress(OSError):
                (base / dname).rmdir()  # only succeeds for now-empty dirs


# -- Lustre -------------------------------------------------------------------------------


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The filesystem type the longest matching mount point in /proc/self/mounts reports."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, best_type = mnt, fields[2]
    return best_type


def set_striping(directory: Path, log: Callable[[str], None] | None) -> None:
    lfs = shutil.which("lfs")
    on_lustre = filesystem_type(directory) == "lustre"
    if lfs is None:
        if on_lustre and log:
            log(f"{directory} is on Lustre but 'lfs' is not on PATH; using the default striping")
        return
    for layout in (LUSTRE_LAYOUT, LUSTRE_FALLBACK_LAYOUT):
        proc = subprocess.run([lfs, "setstripe", *layout, str(directory)], capture_output=True, text=True)
        if proc.returncode == 0:
            return
    # Striping is an optimisation: a failure costs read bandwidth, not correctness.
    if log:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        log(f"could not set Lustre striping on {directory}: {detail[-1] if detail else 'lfs failed'}")
