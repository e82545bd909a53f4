"""Model checkpoints staged once onto the shared filesystem, complete or not at all.

:func:`stage_model` copies a checkpoint (a local directory, a Hugging Face cache snapshot,
or a Hub repo id downloaded on the spot) to ``DEST/NAME`` so that serving can read it with
``HF_HUB_OFFLINE=1`` instead of every node racing to fill a shared HF cache.

* One stager per model, across nodes (:mod:`inferx_slurm.sharedfs.locks`); the others wait and reuse.
* Files are copied in parallel into ``DEST/.NAME.partial``, each to a private temporary
  name that is renamed into place only once complete and flushed, so after any crash every
  file under its real name is whole and a re-run copies only what is missing.
* A manifest (path, size, optional sha256) and a ready marker are written last, then the
  whole directory is renamed to ``DEST/NAME`` in one step: a directory under the final
  name is always complete.
* On Lustre the staging directory is striped before any file is written, so large shards
  spread over many OSTs and many nodes can read them at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from inferx_slurm.fsutil import fsync_dir
from inferx_slurm.sharedfs.locks import LEASE_S, Holder, LockTimeout, exclusive
from inferx_slurm.sharedfs.stage_copy import prune, set_striping, sha256_of, stage_file
from inferx_slurm.sharedfs.stage_manifest import (
    MANIFEST_NAME,
    READY_NAME,
    SourceFile,
    StageError,
    StageSourceError,
    check_reuse,
    is_staged,
    read_manifest,
    write_markers,
)
from inferx_slurm.sharedfs.stage_source import download, list_source, resolve_source, staged_name

__all__ = [
    "MANIFEST_NAME",
    "READY_NAME",
    "STAGE_TIMEOUT_S",
    "StageError",
    "StageResult",
    "StageSourceError",
    "is_staged",
    "read_manifest",
    "serving_env",
    "stage_model",
    "staged_name",
]

# Waiting for another node's stage of a 400+ GB checkpoint can take hours.
STAGE_TIMEOUT_S = 6 * 3600.0


class StageResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    source: str
    files_copied: int
    files_skipped: int
    bytes_copied: int
    total_bytes: int
    seconds: float
    reused: bool


def serving_env(staged_path: str | Path) -> dict[str, str]:
    """Environment for a server that reads the staged model and must never touch the Hub."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "INFERX_MODEL_PATH": str(Path(staged_path)),
    }


def _tidy(lock: Path, partial: Path, lease_s: float) -> None:
    """After a crash between publishing and unlocking: drop the stale lock and any partial dir."""
    if not (os.path.lexists(lock) or os.path.lexists(partial)):
        return
    # Never wait here: the model is ready, and whoever holds the lock is about to find that out.
    with contextlib.suppress(LockTimeout, OSError):
        with exclusive(lock, timeout_s=0, purpose="tidying up", lease_s=lease_s):
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)


def stage_model(
    src: str | Path,
    dest: str | Path,
    *,
    workers: int = 8,
    checksum: bool = False,
    timeout_s: float = STAGE_TIMEOUT_S,
    name: str | None = None,
    lease_s: float = LEASE_S,
    on_wait: Callable[[Holder | None], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> StageResult:
    """Make ``dest/NAME`` a complete copy of ``src`` and return where it is.

    ``src`` is a local checkpoint directory, an HF cache snapshot (or cache repo dir), or a
    Hub repo id ``ORG/NAME[@REVISION]`` (downloaded with ``huggingface_hub`` if installed).
    ``NAME`` defaults to :func:`staged_name`.  Safe to run from many processes and nodes at
    once; a re-run after a complete stage only compares file sizes, and a re-run after an
    interrupted one copies only the files that are missing.  ``checksum`` records a sha256
    per file in the manifest.  Waits up to ``timeout_s`` for another stager of the same model.
    """
    start = time.monotonic()
    if workers < 1:
        raise StageSourceError(f"workers must be at least 1, got {workers}")
    source = resolve_source(src)
    name = name or source.name
    if not name or "/" in name or name.startswith(".") or name in ("..",):
        raise StageSourceError(f"invalid stage name {name!r}; use a plain directory name not starting with '.'")
    dest = Path(dest).expanduser().absolute()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageSourceError(f"cannot create {dest}: {exc.strerror}; pass a writable --dest") from None
    final = dest / name

    def result(files: list[SourceFile] | None, copied: int, nbytes: int, reused: bool) -> StageResult:
        sizes = [f.size for f in files] if files is not None else [f["size"] for f in read_manifest(final)["files"]]
        return StageResult(
            path=final,
            source=source.ident,
            files_copied=copied,
            files_skipped=len(sizes) - copied,
            bytes_copied=nbytes,
            total_bytes=sum(sizes),
            seconds=time.monotonic() - start,
            reused=reused,
        )

    files = list_source(source.root) if source.root is not None else None
    if files is not None and source.root == final:
        raise StageSourceError(f"{src} is already the stage directory; pass the original checkpoint")

    lock = dest / f".{name}.lock"
    partial = dest / f".{name}.partial"
    if is_staged(final):
        check_reuse(final, source.ident, files)
        _tidy(lock, partial, lease_s)
        return result(files, 0, 0, reused=True)

    with exclusive(lock, timeout_s=timeout_s, purpose=f"staging {source.ident}", lease_s=lease_s, on_wait=on_wait):
        if is_staged(final):
            check_reuse(final, source.ident, files)
            return result(files, 0, 0, reused=True)
        if final.exists():
            raise StageError(
                f"{final} exists but is not a complete stage (no {READY_NAME}); it was not made by "
                "this tool, so move it away or pass --name"
            )
        try:
            partial.mkdir()
        except FileExistsError:
            pass  # an interrupted stage: resume it
        if not any(partial.iterdir()):
            # Files take their layout from the directory when created, so stripe it first.
            set_striping(partial, log)

        if source.kind == "hub":
            before = {p for p in partial.rglob("*") if p.is_file()}
            download(source, partial, workers, log)
            files = [f for f in list_source(partial) if not f.rel.startswith(".cache/")]
            copied = sum(1 for f in files if f.path not in before)
            skipped = len(files) - copied
            nbytes = sum(f.size for f in files if f.path not in before)
            digests = {f.rel: sha256_of(f.path) for f in files} if checksum else {}
        else:
            assert files is not None
            copied = skipped = nbytes = 0
            digests = {}
            prune(partial, {f.rel for f in files})
            # Largest first, so one big shard does not start last and leave the pool idle.
            order = sorted(files, key=lambda f: f.size, reverse=True)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = pool.map(lambda f: stage_file(f, partial, checksum), order)
                for sf, (did_copy, n, digest) in zip(order, outcomes, strict=True):
                    copied += did_copy
                    skipped += not did_copy
                    nbytes += n
                    if digest is not None:
                        digests[sf.rel] = digest

        write_markers(partial, source.ident, files, digests)
        fsync_dir(partial)
        try:
            os.rename(partial, final)
        except OSError:
            # Only a holder that lost its lease can get here: someone else finished first.
            if not is_staged(final):
                raise
            return result(files, 0, 0, reused=True)
        fsync_dir(dest)
        if log:
            log(f"staged {source.ident} -> {final}: {copied} files copied, {skipped} already there")
        return result(files, copied, nbytes, reused=False)
