"""Where a stage comes from: a local checkpoint directory, a Hugging Face cache snapshot, or a
Hub repo id downloaded on the spot; the name it is staged under and the files it holds."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferx_slurm.sharedfs.stage_manifest import OWN_FILES, TMP_MARK, SourceFile, StageError, StageSourceError

DOWNLOAD_ATTEMPTS = 5
REPO_ID_RE = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)(?:@(?P<rev>[A-Za-z0-9_./-]+))?")
HF_SNAPSHOT_RE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)")


@dataclass(frozen=True)
class Source:
    kind: str  # "local" or "hub"
    ident: str  # what the manifest records as the source
    name: str  # default directory name under dest
    root: Path | None = None
    repo_id: str | None = None
    revision: str | None = None


def hf_repo_snapshot(repo_dir: Path) -> Path | None:
    # A cache repo dir (models--org--name) names its current snapshot in refs/main.
    ref = repo_dir / "refs" / "main"
    with contextlib.suppress(OSError):
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    return None


def resolve_source(src: str | Path) -> Source:
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
        if (m := HF_SNAPSHOT_RE.fullmatch(root.name)) and (snap := hf_repo_snapshot(root)):
            root = snap
        parent = root.parent.parent
        if root.parent.name == "snapshots" and (m := HF_SNAPSHOT_RE.fullmatch(parent.name)):
            name = f"{m['org']}--{m['name']}--{root.name[:12]}"
        else:
            name = root.name
        return Source(kind="local", ident=str(root), name=name, root=root)
    if exists:
        raise StageSourceError(f"model source {text} is not a directory; pass the checkpoint's directory")
    m = REPO_ID_RE.fullmatch(text)
    if m is None or text.startswith((".", "/", "~")):
        raise StageSourceError(
            f"model source {text} does not exist; pass an existing checkpoint directory, "
            "an HF cache snapshot (.../models--ORG--NAME/snapshots/REV) or a repo id ORG/NAME[@REVISION]"
        )
    repo, rev = m["repo"], m["rev"]
    name = repo.replace("/", "--") + (f"--{re.sub(r'[^A-Za-z0-9_.-]+', '-', rev)}" if rev else "")
    return Source(kind="hub", ident=text, name=name, repo_id=repo, revision=rev)


def staged_name(src: str | Path) -> str:
    """The directory name ``src`` is staged under (unless ``name=`` overrides it)."""
    return resolve_source(src).name


def list_source(root: Path) -> list[SourceFile]:
    files: list[SourceFile] = []
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
            if rel in OWN_FILES or TMP_MARK in fname:
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
            files.append(SourceFile(rel=rel, path=full, size=fst.st_size, mtime=int(fst.st_mtime)))
    return files


def download(source: Source, target: Path, workers: int, log: Callable[[str], None] | None) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise StageSourceError(
            f"{source.ident} is not an existing directory, and downloading it as a Hugging Face repo "
            "id needs the huggingface_hub package: pip install huggingface_hub, or pre-stage the "
            "model (download it where there is internet access and pass its directory)"
        ) from None
    delay = 5.0
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            # Downloading straight into the staging dir resumes partial files on retry.
            snapshot_download(
                repo_id=source.repo_id, revision=source.revision, local_dir=str(target), max_workers=workers
            )
            return
        except Exception as exc:  # the hub client raises many types for network trouble
            if attempt == DOWNLOAD_ATTEMPTS:
                raise StageError(
                    f"downloading {source.ident} failed after {attempt} attempts: {exc}; check the repo id, "
                    "HF_TOKEN and network access, or pre-stage the model from a local directory"
                ) from exc
            if log:
                log(f"download of {source.ident} failed ({exc}); retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
