"""The on-disk contract of a staged model: the names a stage keeps for itself, its manifest and
ready marker, and whether an existing stage may be reused for a source."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from inferx_slurm.errors import InferxError

MANIFEST_NAME = ".inferx-manifest.json"
READY_NAME = ".inferx-ready"
# Files being written carry this in their name until they are whole.
TMP_MARK = ".inferx-tmp-"
OWN_FILES = {MANIFEST_NAME, READY_NAME}


class StageSourceError(InferxError, ValueError):
    """The source cannot be staged as given (missing, unreadable, needs a package)."""

    exit_code = 2


class StageError(InferxError):
    """Staging failed or found something it must not overwrite."""

    exit_code = 1


@dataclass(frozen=True)
class SourceFile:
    rel: str
    path: Path
    size: int
    mtime: int


def is_staged(path: str | Path) -> bool:
    """True if ``path`` is a complete stage: its ready marker and manifest are present."""
    path = Path(path)
    return (path / READY_NAME).is_file() and (path / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path) -> dict:
    """The manifest of a staged model: ``{"source", "files": [{"path", "size", "sha256"?}], ...}``."""
    return json.loads((Path(path) / MANIFEST_NAME).read_text())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}{TMP_MARK}{unique_suffix()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_markers(partial: Path, source_ident: str, files: list[SourceFile], digests: dict[str, str]) -> None:
    """The manifest, then the ready marker: written last, so a stage that has them is complete."""
    manifest = {
        "version": 1,
        "source": source_ident,
        "created": time.time(),
        "total_bytes": sum(f.size for f in files),
        "files": [
            {"path": f.rel, "size": f.size, **({"sha256": digests[f.rel]} if f.rel in digests else {})}
            for f in files
        ],
    }
    write_atomic(partial / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    write_atomic(partial / READY_NAME, json.dumps({"ready": time.time(), "host": socket.gethostname()}) + "\n")


def unique_suffix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"


def check_reuse(final: Path, source_ident: str, files: list[SourceFile] | None) -> None:
    """Refuse a complete stage at `final` that is not a copy of this source (as its files are now)."""
    try:
        manifest = read_manifest(final)
        staged = {f["path"]: f["size"] for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageError(f"{final} has an unreadable manifest ({exc}); move it away and stage again") from None
    if files is None:
        if manifest.get("source") != source_ident:
            raise StageError(
                f"{final} holds a stage of {manifest.get('source')}, not {source_ident}; "
                "pass --name to stage it under another name"
            )
        return
    current = {f.rel: f.size for f in files}
    if current != staged:
        differ = sorted(set(current.items()) ^ set(staged.items()))
        example = differ[0][0] if differ else "?"
        raise StageError(
            f"{final} is a complete stage of {manifest.get('source')} but differs from {source_ident} "
            f"({len({p for p, _ in differ})} files differ, e.g. {example}); stage under another name "
            "with --name, or move the old stage away"
        )
