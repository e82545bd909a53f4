"""Small filesystem helpers: every file a user keeps is written whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write to a temp file in the same dir, fsync, rename: readers see the old or new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable; a no-op where the filesystem cannot fsync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_lines(paths: list[Path], n: int) -> list[str]:
    """The last `n` lines of the files, read in order as one stream; a missing file reads empty."""
    out: deque[str] = deque(maxlen=n)
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                out.extend(line.rstrip("\n") for line in f)
        except OSError:
            continue
    return list(out)
