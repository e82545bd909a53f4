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
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from inferx_slurm.fsutil import fsync_dir
from inferx_slurm.errors import InferxError
from inferx_slurm.sharedfs.locks import LEASE_S, Holder, LockTimeout, exclusive

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

MANIFEST_NAME = ".inferx-manifest.json"
READY_NAME = ".inferx-ready"
# Waiting for another node's stage of a 400+ GB checkpoint can take hours.
STAGE_TIMEOUT_S = 6 * 3600.0
_TMP_MARK = ".inferx-tmp-"
_OWN_FILES = {MANIFEST_NAME, READY_NAME}
_CHUNK = 8 << 20
# Progressive layout: small files (configs, tokenizers) on one OST, big shards over all of them.
LUSTRE_LAYOUT = ("-E", "64M", "-c", "1", "-S", "1M", "-E", "-1", "-c", "-1", "-S", "4M")
_LUSTRE_FALLBACK_LAYOUT = ("-c", "-1", "-S", "4M")
_DOWNLOAD_ATTEMPTS = 5
_REPO_ID_RE = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)(?:@(?P<rev>[A-Za-z0-9_./-]+))?")
_HF_SNAPSHOT_RE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)")


class StageSourceError(InferxError, ValueError):
    """The source cannot be staged as given (missing, unreadable, needs a package)."""

    exit_code = 2


class StageError(InferxError):
    """Staging failed or found something it must not overwrite."""

    exit_code = 1


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


@dataclass(frozen=True)
class _SourceFile:
    rel: str
    path: Path
    size: int
    mtime: int


@dataclass(frozen=True)
class _Source:
    kind: str  # "local" or "hub"
    ident: str  # what the manifest records as the source
    name: str  # default directory name under dest
    root: Path | None = None
    repo_id: str | None = None
    revision: str | None = None


# -- source resolution --------------------------------------------------------------------


def _hf_repo_snapshot(repo_dir: Path) -> Path | None:
    # A cache repo dir (models--org--name) names its current snapshot in refs/main.
    ref = repo_dir / "refs" / "main"
    with contextlib.suppress(OSError):
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    return None


def _resolve_source(src: str | Path) -> _Source:
    text = str(src).strip()
    if not text:
        raise StageSourceError("no model source given; pass a local directory, an HF cache snapshot or a repo id")
    path = Path(text).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:  # e.g. a name longer than the filesystem allows
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise StageSourceError(f"model source {shown} is not a usable path ({e.strerror}); pass a checkpoint "
                               "directory, an HF cache snapshot or a repo id ORG/NAME") from None
    if is_dir:
        root = path.resolve()
        if (m := _HF_SNAPSHOT_RE.fullmatch(root.name)) and (snap := _hf_repo_snapshot(root)):
            root = snap
        parent = root.parent.parent
        if root.parent.name == "snapshots" and (m := _HF_SNAPSHOT_RE.fullmatch(parent.name)):
            name = f"{m['org']}--{m['name']}--{root.name[:12]}"
        else:
            name = root.name
        return _Source(kind="local", ident=str(root), name=name, root=root)
    if exists:
        raise StageSourceError(f"model source {text} is not a directory; pass the checkpoint's directory")
    m = _REPO_ID_RE.fullmatch(text)
    if m is None or text.startswith((".", "/", "~")):
        raise StageSourceError(
            f"model source {text} does not exist; pass an existing checkpoint directory, "
            "an HF cache snapshot (.../models--ORG--NAME/snapshots/REV) or a repo id ORG/NAME[@REVISION]"
        )
    repo, rev = m["repo"], m["rev"]
    name = repo.replace("/", "--") + (f"--{re.sub(r'[^A-Za-z0-9_.-]+', '-', rev)}" if rev else "")
    return _Source(kind="hub", ident=text, name=name, repo_id=repo, revision=rev)


def staged_name(src: str | Path) -> str:
    """The directory name ``src`` is staged under (unless ``name=`` overrides it)."""
    return _resolve_source(src).name


def _list_source(root: Path) -> list[_SourceFile]:
    files: list[_SourceFile] = []
    seen_dirs: set[tuple[int, int]] = set()
    # followlinks: HF cache snapshots are trees of symlinks into blobs/; guard against loops.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames.sort()
        base = Path(dirpath)
        for fname in sorted(filenames):
            full = base / fname
            rel = full.relative_to(root).as_posix()
            if rel in _OWN_FILES or _TMP_MARK in fname:
                continue
            try:
                fst = full.stat()
            except FileNotFoundError:
                raise StageSourceError(
                    f"{full} is a broken symlink; the source looks incompletely downloaded, finish "
                    "the download (or delete the link) and stage again"
                ) from None
            except PermissionError:
                raise StageSourceError(f"cannot read {full} (permission denied); fix its permissions") from None
            files.append(_SourceFile(rel=rel, path=full, size=fst.st_size, mtime=int(fst.st_mtime)))
    return files


# -- manifest and markers -----------------------------------------------------------------


def is_staged(path: str | Path) -> bool:
    """True if ``path`` is a complete stage: its ready marker and manifest are present."""
    path = Path(path)
    return (path / READY_NAME).is_file() and (path / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path) -> dict:
    """The manifest of a staged model: ``{"source", "files": [{"path", "size", "sha256"?}], ...}``."""
    return json.loads((Path(path) / MANIFEST_NAME).read_text())


def serving_env(staged_path: str | Path) -> dict[str, str]:
    """Environment for a server that reads the staged model and must never touch the Hub."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "INFERX_MODEL_PATH": str(Path(staged_path)),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{_unique()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# -- copying ------------------------------------------------------------------------------


def _unique() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_with_hash(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def _complete_copy(target: Path, sf: _SourceFile) -> bool:
    # Files reach their real name only once whole, so size and mtime (set from the source
    # when copied) tell a finished copy from a changed source.
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    return st.st_size == sf.size and int(st.st_mtime) == sf.mtime


def _stage_file(sf: _SourceFile, partial: Path, checksum: bool) -> tuple[bool, int, str | None]:
    target = partial / sf.rel
    if _complete_copy(target, sf):
        return False, 0, _sha256(target) if checksum else None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}{_TMP_MARK}{_unique()}")
    try:
        if checksum:
            digest: str | None = _copy_with_hash(sf.path, tmp)
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


def _prune(partial: Path, keep: set[str]) -> None:
    # Everything inside .NAME.partial is ours: leftovers of a crashed copy, or files the
    # source no longer has.  Removing them makes the stage an exact copy of the source.
    for dirpath, dirnames, filenames in os.walk(partial, topdown=False):
        base = Path(dirpath)
        for fname in filenames:
            rel = (base / fname).relative_to(partial).as_posix()
            if rel not in keep and rel not in _OWN_FILES:
                (base / fname).unlink()
        for dname in dirnames:
            with contextlib.suppress(OSError):
                (base / dname).rmdir()  # only succeeds for now-empty dirs


# -- Lustre -------------------------------------------------------------------------------


def _filesystem_type(path: Path, mounts: str | None = None) -> str | None:
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


def _set_striping(directory: Path, log: Callable[[str], None] | None) -> None:
    lfs = shutil.which("lfs")
    on_lustre = _filesystem_type(directory) == "lustre"
    if lfs is None:
        if on_lustre and log:
            log(f"{directory} is on Lustre but 'lfs' is not on PATH; using the default striping")
        return
    for layout in (LUSTRE_LAYOUT, _LUSTRE_FALLBACK_LAYOUT):
        proc = subprocess.run([lfs, "setstripe", *layout, str(directory)], capture_output=True, text=True)
        if proc.returncode == 0:
            return
    # Striping is an optimisation: a failure costs read bandwidth, not correctness.
    if log:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        log(f"could not set Lustre striping on {directory}: {detail[-1] if detail else 'lfs failed'}")


# -- Hub download -------------------------------------------------------------------------


def _download(source: _Source, target: Path, workers: int, log: Callable[[str], None] | None) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise StageSourceError(
            f"{source.ident} is not an existing directory, and downloading it as a Hugging Face repo "
            "id needs the huggingface_hub package: pip install huggingface_hub, or pre-stage the "
            "model (download it where there is internet access and pass its directory)"
        ) from None
    delay = 5.0
    for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
        try:
            # Downloading straight into the staging dir resumes partial files on retry.
            snapshot_download(
                repo_id=source.repo_id, revision=source.revision, local_dir=str(target), max_workers=workers
            )
            return
        except Exception as exc:  # the hub client raises many types for network trouble
            if attempt == _DOWNLOAD_ATTEMPTS:
                raise StageError(
                    f"downloading {source.ident} failed after {attempt} attempts: {exc}; check the repo id, "
                    "HF_TOKEN and network access, or pre-stage the model from a local directory"
                ) from exc
            if log:
                log(f"download of {source.ident} failed ({exc}); retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)


# -- staging ------------------------------------------------------------------------------


def _check_reuse(final: Path, source: _Source, files: list[_SourceFile] | None) -> None:
    try:
        manifest = read_manifest(final)
        staged = {f["path"]: f["size"] for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageError(f"{final} has an unreadable manifest ({exc}); move it away and stage again") from None
    if files is None:
        if manifest.get("source") != source.ident:
            raise StageError(
                f"{final} holds a stage of {manifest.get('source')}, not {source.ident}; "
                "pass --name to stage it under another name"
            )
        return
    current = {f.rel: f.size for f in files}
    if current != staged:
        differ = sorted(set(current.items()) ^ set(staged.items()))
        example = differ[0][0] if differ else "?"
        raise StageError(
            f"{final} is a complete stage of {manifest.get('source')} but differs from {source.ident} "
            f"({len({p for p, _ in differ})} files differ, e.g. {example}); stage under another name "
            "with --name, or move the old stage away"
        )


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
    source = _resolve_source(src)
    name = name or source.name
    if not name or "/" in name or name.startswith(".") or name in ("..",):
        raise StageSourceError(f"invalid stage name {name!r}; use a plain directory name not starting with '.'")
    dest = Path(dest).expanduser().absolute()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageSourceError(f"cannot create {dest}: {exc.strerror}; pass a writable --dest") from None
    final = dest / name

    def result(files: list[_SourceFile] | None, copied: int, nbytes: int, reused: bool) -> StageResult:
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

    files = _list_source(source.root) if source.root is not None else None
    if files is not None and source.root == final:
        raise StageSourceError(f"{src} is already the stage directory; pass the original checkpoint")

    lock = dest / f".{name}.lock"
    partial = dest / f".{name}.partial"
    if is_staged(final):
        _check_reuse(final, source, files)
        _tidy(lock, partial, lease_s)
        return result(files, 0, 0, reused=True)

    with exclusive(lock, timeout_s=timeout_s, purpose=f"staging {source.ident}", lease_s=lease_s, on_wait=on_wait):
        if is_staged(final):
            _check_reuse(final, source, files)
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
            _set_striping(partial, log)

        if source.kind == "hub":
            before = {p for p in partial.rglob("*") if p.is_file()}
            _download(source, partial, workers, log)
            files = [f for f in _list_source(partial) if not f.rel.startswith(".cache/")]
            copied = sum(1 for f in files if f.path not in before)
            skipped = len(files) - copied
            nbytes = sum(f.size for f in files if f.path not in before)
            digests = {f.rel: _sha256(f.path) for f in files} if checksum else {}
        else:
            assert files is not None
            copied = skipped = nbytes = 0
            digests = {}
            _prune(partial, {f.rel for f in files})
            # Largest first, so one big shard does not start last and leave the pool idle.
            order = sorted(files, key=lambda f: f.size, reverse=True)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = pool.map(lambda f: _stage_file(f, partial, checksum), order)
                for sf, (did_copy, n, digest) in zip(order, outcomes, strict=True):
                    copied += did_copy
                    skipped += not did_copy
                    nbytes += n
                    if digest is not None:
                        digests[sf.rel] = digest

        manifest = {
            "version": 1,
            "source": source.ident,
            "created": time.time(),
            "total_bytes": sum(f.size for f in files),
            "files": [
                {"path": f.rel, "size": f.size, **({"sha256": digests[f.rel]} if f.rel in digests else {})}
                for f in files
            ],
        }
        _write_atomic(partial / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
        _write_atomic(partial / READY_NAME, json.dumps({"ready": time.time(), "host": socket.gethostname()}) + "\n")
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
