"""Container images as squashfs files on a shared filesystem, imported once and atomically.

Pyxis/enroot run a container from a squashfs file; many jobs of one recipe start together
and all want the same image.  :func:`import_image` makes that safe and cheap:

* the image gets a deterministic file name (:func:`image_file_name`) in the shared image dir;
* one process imports it under a cross-node lock (:mod:`inferx_slurm.sharedfs.locks`) while the rest
  wait and then reuse the file;
* ``enroot import`` writes to a private temporary name next to the final one, the result is
  checked to be a readable squashfs, flushed to disk, and only then linked under the final
  name, so the final name never holds a partial file, whatever gets killed when;
* temporaries of crashed imports are removed by the next import of the same image.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from inferx_slurm.fsutil import fsync_dir
from inferx_slurm.errors import InferxError
from inferx_slurm.sharedfs.locks import LEASE_S, Holder, LockTimeout, exclusive
from inferx_slurm.recipe.image_uri import InvalidImageURI, image_file_name, is_local_image, normalize_image_uri

__all__ = [
    "IMPORT_TIMEOUT_S",
    "ImageImportError",
    "ImportResult",
    "InvalidImageURI",
    "image_file_name",
    "import_image",
    "is_local_image",
    "normalize_image_uri",
    "verify_squashfs",
]

# Waiting for another node's import: a multi-GB image pull can take a long while.
IMPORT_TIMEOUT_S = 3 * 3600.0

class ImageImportError(InferxError):
    """enroot failed, or produced something that is not a readable squashfs."""

    exit_code = 1


class ImportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    uri: str
    imported: bool
    seconds: float



_SQUASHFS_MAGIC = 0x73717368
_SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQQ")


def _superblock_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(_SUPERBLOCK.size)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if len(raw) < _SUPERBLOCK.size:
        return f"only {len(raw)} bytes long"
    fields = _SUPERBLOCK.unpack(raw)
    magic, major, bytes_used = fields[0], fields[9], fields[12]
    if magic != _SQUASHFS_MAGIC:
        return "no squashfs magic number"
    if major != 4:
        return f"squashfs version {major}, expected 4"
    if bytes_used > size:
        return f"truncated ({size} of {bytes_used} bytes)"
    return None


def verify_squashfs(path: Path, *, deep: bool = True) -> None:
    """Raise :class:`ImageImportError` unless ``path`` is a complete, readable squashfs.

    The superblock check is instant; ``deep`` also lists the whole tree with ``unsquashfs``
    (metadata only, no file data), which catches corrupted inode and directory tables.
    """
    problem = _superblock_problem(path)
    if problem is None and deep and (unsquashfs := shutil.which("unsquashfs")):
        proc = subprocess.run(
            [unsquashfs, "-l", "-no-progress", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            problem = f"unsquashfs cannot read it ({lines[-1] if lines else f'exit {proc.returncode}'})"
    if problem is not None:
        raise ImageImportError(f"{path} is not a usable squashfs image: {problem}")


# -- import ---------------------------------------------------------------------------------


def _scratch_prefix(final: Path) -> str:
    return f".{final.name}."


def _unique_suffix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"


def _clean_leftovers(final: Path) -> None:
    # Only called while holding the image's lock, so nothing alive writes these any more.
    prefix = _scratch_prefix(final)
    for entry in final.parent.iterdir():
        name = entry.name
        if name.startswith(prefix) and (name[len(prefix):].startswith(("tmp-", "run-"))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _tidy(final: Path, lock: Path, lease_s: float) -> None:
    """Remove what a crashed import of an already published image left behind, if anything."""
    prefix = _scratch_prefix(final)
    try:
        if not any(entry.name.startswith(prefix) for entry in os.scandir(final.parent)):
            return
    except OSError:
        return
    # Never wait here: the image is ready, and whoever holds the lock will tidy up itself.
    with contextlib.suppress(LockTimeout, OSError):
        with exclusive(lock, timeout_s=0, purpose="tidying up", lease_s=lease_s):
            _clean_leftovers(final)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> bool:
    """Give ``tmp`` the name ``final`` without ever replacing an existing file.  False if taken."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError:
        # Some filesystems have no hard links; a rename is as atomic, it just would replace.
        if final.exists():
            return False
        os.replace(tmp, final)
        return True
    tmp.unlink()
    return True


# enroot runs under this small guardian so that if we are killed (kill -9 included) the whole
# import, grandchildren too, dies with us instead of writing a file nobody will publish.
# Linux tells the guardian through PR_SET_PDEATHSIG; it then kills its process group.
_GUARDIAN = """
import ctypes, os, signal, subprocess, sys
def stop(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    stop()
sys.exit(subprocess.call(sys.argv[2:]))
"""


def _run_enroot(enroot: str, uri: str, out: Path, runtime: Path, log: Callable[[str], None] | None) -> None:
    env = dict(os.environ, ENROOT_RUNTIME_PATH=str(runtime))
    tail: deque[str] = deque(maxlen=20)
    argv = [enroot, "import", "-o", str(out), uri]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARDIAN, str(os.getpid()), *argv],
            start_new_session=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ImageImportError(f"cannot run {enroot!r}: {exc.strerror}") from exc
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if log is not None:
                log(line.rstrip())
        proc.wait()
    except BaseException:
        # Interrupted (Ctrl-C, an error in log): do not leave the import running behind us.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if proc.returncode != 0:
        detail = next((line for line in reversed(tail) if line.strip()), f"exit status {proc.returncode}")
        raise ImageImportError(
            f"enroot import of {uri} failed: {detail}; check the image name and registry "
            "credentials (~/.config/enroot/.credentials), or import it by hand with "
            f"'enroot import -o FILE {uri}' to see the full output"
        )


def import_image(
    uri: str,
    dest: Path,
    *,
    timeout_s: float = IMPORT_TIMEOUT_S,
    enroot: str = "enroot",
    lease_s: float = LEASE_S,
    on_wait: Callable[[Holder | None], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> ImportResult:
    """Make sure ``dest`` holds a complete squashfs of ``uri`` and return its path.

    Safe to call from any number of processes on any number of nodes at once: exactly one
    runs ``enroot import`` (the one found on PATH, or ``enroot``), the others wait up to
    ``timeout_s`` for it (``on_wait`` is told who holds the lock) and reuse its file.  A local
    ``.sqsh`` path is checked and returned as is.  ``log`` receives enroot's output lines.
    """
    start = time.monotonic()
    normalized = normalize_image_uri(uri)
    if is_local_image(normalized):
        local = Path(normalized).expanduser().absolute()
        if not local.is_file():
            raise ImageImportError(f"image file {local} does not exist; check the path or import it first")
        verify_squashfs(local, deep=False)
        return ImportResult(path=local, uri=normalized, imported=False, seconds=time.monotonic() - start)

    dest = Path(dest).expanduser().absolute()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageImportError(f"cannot create image dir {dest}: {exc.strerror}; pass a writable --dest") from exc
    final = dest / image_file_name(normalized)

    def reused() -> ImportResult:
        return ImportResult(path=final, uri=normalized, imported=False, seconds=time.monotonic() - start)

    lock = dest / f".{final.name}.lock"
    # Anything under the final name was verified before it was published.
    if final.is_file() and _superblock_problem(final) is None:
        _tidy(final, lock, lease_s)
        return reused()

    enroot_path = shutil.which(enroot)
    if enroot_path is None:
        raise ImageImportError(
            f"{enroot!r} not found on PATH; run this where enroot is installed (the compute "
            "nodes of a pyxis cluster), or import the image there once and pass its .sqsh path"
        )

    with exclusive(lock, timeout_s=timeout_s, purpose=f"importing {normalized}", lease_s=lease_s, on_wait=on_wait):
        if final.is_file() and _superblock_problem(final) is None:
            return reused()
        if final.exists():
            raise ImageImportError(
                f"{final} exists but is not a usable squashfs ({_superblock_problem(final)}); "
                "it was not written by this tool, so move it away and re-run"
            )
        _clean_leftovers(final)
        suffix = _unique_suffix()
        tmp = dest / f"{_scratch_prefix(final)}tmp-{suffix}"
        runtime = dest / f"{_scratch_prefix(final)}run-{suffix}"
        runtime.mkdir()
        try:
            _run_enroot(enroot_path, normalized, tmp, runtime, log)
            if not tmp.is_file():
                raise ImageImportError(f"enroot import of {normalized} reported success but wrote no file")
            verify_squashfs(tmp)
            _fsync_file(tmp)
            published = _publish(tmp, final)
            fsync_dir(dest)
        finally:
            shutil.rmtree(runtime, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if not published:
            return reused()
    return ImportResult(path=final, uri=normalized, imported=True, seconds=time.monotonic() - start)
