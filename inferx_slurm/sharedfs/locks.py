"""Exclusive locks that hold across the nodes of a shared filesystem (Lustre, NFS, GPFS).

Why an O_EXCL ("soft") lock and not flock/fcntl
------------------------------------------------
``filelock`` offers both kinds: ``FileLock`` asks the kernel for an flock/fcntl lock on an
open file, ``SoftFileLock`` and its variants treat *the existence of a file created with
O_CREAT|O_EXCL* as the lock.  On a shared filesystem the kernel kind is unreliable exactly
where we need it:

* Lustre honours flock across nodes only when every client mounts with ``-o flock``.  With
  ``-o localflock`` (a common default for speed) a lock is silently local to one node, so
  two nodes both "hold" it; with ``-o noflock`` the call fails with ENOSYS.
* NFS maps flock onto NLM byte-range locks (v3) or v4 state; lock recovery after a client
  or server restart, and some servers and export options, lose locks or refuse them.
* A held flock is invisible to a waiter: it cannot tell who holds it or for how long.

Exclusive create is a single metadata operation that Lustre's MDS, NFSv3+ and GPFS all
serialise, so it is atomic across nodes whatever the mount options.  Its weakness is that a
crashed holder leaves the file behind, so this module adds what a soft lock needs:

* **Holder identity.**  The lock file records pid, host and process start time; a sidecar
  ``<lock>.holder`` adds when the hold began and what it is for, so a waiter can say
  "held by pid 4242 on node17 since 12:00:03 (importing docker://...)".
* **Dead-holder detection.**  A holder on *this* host whose process is gone (kill -9,
  OOM, node-local crash) is proven dead and its lock is taken over at once.
* **Heartbeat lease.**  The holder refreshes the lock file's mtime every ``lease_s/3``
  seconds from a background thread.  A holder on *another* host cannot be probed, so a
  waiter takes the lock over once it has watched the file go unrefreshed for ``lease_s``
  seconds on its own monotonic clock (so clock skew between nodes cannot expire a live
  lock).  After a node dies, the next run therefore waits at most ``lease_s`` (default 60 s).
* **Recordless markers.**  A holder killed between creating the lock file and writing its
  record leaves an empty file that names nobody, so neither rule above can clear it (filelock
  reads an empty marker as a pre-3.22 holder, which it never breaks).  An empty marker left
  unchanged for ``lease_s`` is removed, the same bound as a missed heartbeat.
* **Safe takeover.**  A stale lock is swapped for the new holder's in one atomic rename
  exchange that is verified afterwards, never "check, then unlink", so two waiters that
  both judge the lock stale cannot both end up holding it.
* **Bounded waits.**  Waiting gives up after ``timeout_s`` with :class:`LockTimeout`, whose
  message names the holder and what to do.

A lease trades strict exclusion for progress: a holder frozen for longer than ``lease_s``
(SIGSTOP, a hung filesystem) can lose its lock while it still runs.  Callers therefore never
rely on the lock for correctness, only to avoid duplicate work: every writer writes to its
own temporary name and publishes with an atomic rename, so an overlap costs time, never a
half-written file.  Every process locking one path must use the same ``lease_s``.

Requires ``filelock >= 3.30`` (``SoftFileLease``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inferx_slurm.errors import InferxError

try:
    from filelock import SoftFileLease, Timeout
except ImportError as exc:  # pragma: no cover - depends on the installed filelock
    raise ImportError(
        "inferx_slurm needs filelock>=3.30 for its shared-filesystem locks; "
        "run: pip install -U 'filelock>=3.30'"
    ) from exc

__all__ = [
    "LEASE_S",
    "Holder",
    "HeldLock",
    "LockTimeout",
    "exclusive",
    "read_holder",
]

LEASE_S = 60.0
# A waiter polls fast at first (the usual wait is for a short import) and backs off so that
# hundreds of waiting jobs do not hammer the metadata server.
_POLL_FIRST_S = 0.05
_POLL_MAX_S = 1.0


def wait_notice(what: str, report: Callable[[str], None]) -> Callable[["Holder | None"], None]:
    """An on_wait callback that reports whom the caller is waiting for (`what` when the holder
    cannot be read)."""
    return lambda holder: report(f"waiting for {holder.describe() if holder else what} to finish")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as a waiter can tell."""

    host: str
    pid: int
    since: float | None = None
    purpose: str | None = None
    heartbeat_age_s: float | None = None

    def describe(self) -> str:
        parts = [f"pid {self.pid} on {self.host}"]
        if self.since is not None:
            parts.append(time.strftime("since %Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        text = " ".join(parts)
        if self.purpose:
            text += f" ({self.purpose})"
        if self.heartbeat_age_s is not None:
            text += f", last heartbeat {max(self.heartbeat_age_s, 0.0):.0f}s ago"
        return text


class LockTimeout(InferxError, TimeoutError):
    """Raised when a lock could not be acquired within the allowed time."""

    exit_code = 1

    def __init__(self, lock_path: Path, waited_s: float, holder: Holder | None, lease_s: float):
        self.lock_path = Path(lock_path)
        self.waited_s = waited_s
        self.holder = holder
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"gave up after {waited_s:.0f}s waiting for {self.lock_path}, held by {who}; "
            f"wait longer (raise the timeout), or if that process is gone for good "
            f"re-run: its lock is taken over once it has missed heartbeats for {lease_s:.0f}s"
        )


def _sidecar(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def _marker_owner(lock_path: Path) -> tuple[int, str] | None:
    # The lock file is written by filelock; its owner record is the authority on who holds it.
    lease = SoftFileLease(str(lock_path), lease_duration=LEASE_S)
    owner = lease.owner
    return None if owner is None else (owner.pid, owner.hostname)


def read_holder(lock_path: Path) -> Holder | None:
    """Describe the current holder of ``lock_path``, or None if it is free or unreadable."""
    lock_path = Path(lock_path)
    try:
        owner = _marker_owner(lock_path)
        mtime = lock_path.stat().st_mtime
    except OSError:
        return None
    if owner is None:
        return None
    pid, marker_host = owner
    since = purpose = None
    host = marker_host
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        info = json.loads(_sidecar(lock_path).read_text())
        # A sidecar left by a crashed holder describes someone else; only trust a match.
        if info["pid"] == pid and info["marker_host"] == marker_host:
            since, purpose, host = float(info["since"]), info.get("purpose"), info["host"]
    return Holder(host=host, pid=pid, since=since, purpose=purpose, heartbeat_age_s=time.time() - mtime)


@dataclass
class HeldLock:
    """Handle for a held lock.  ``compromised`` turns True if the lease was lost while held."""

    path: Path
    _lease: SoftFileLease
    waited_s: float

    @property
    def compromised(self) -> bool:
        return self._lease.compromise is not None


def _write_sidecar(lock_path: Path, lease: SoftFileLease, purpose: str) -> None:
    owner = lease.owner
    if owner is None:
        return
    info = {
        "host": socket.gethostname(),
        "marker_host": owner.hostname,
        "pid": owner.pid,
        "since": time.time(),
        "purpose": purpose,
    }
    tmp = lock_path.with_name(f"{lock_path.name}.holder.{os.getpid()}.{random.getrandbits(32):08x}")
    try:
        tmp.write_text(json.dumps(info))
        os.replace(tmp, _sidecar(lock_path))
    except OSError:
        # The sidecar only improves messages; never fail a hold over it.
        with contextlib.suppress(OSError):
            tmp.unlink()


def _clear_recordless_marker(lock_path: Path, seen: dict[tuple[int, int], float], lease_s: float) -> None:
    """Remove an empty lock file that has stayed unchanged for ``lease_s`` on our own clock.

    ``seen`` remembers, across polls of one waiter, when each empty marker was first seen.
    """
    try:
        st = os.lstat(lock_path)
    except OSError:
        return
    if st.st_size != 0:
        seen.clear()
        return
    key = (st.st_ino, st.st_mtime_ns)
    now = time.monotonic()
    first = seen.setdefault(key, now)
    if now - first < lease_s:
        return
    seen.clear()
    # Rename, then check what was moved: never "check, then unlink", which could remove a
    # marker another waiter published between the two steps.
    aside = lock_path.with_name(f".{lock_path.name}.recordless-{os.getpid()}-{random.getrandbits(32):08x}")
    try:
        os.rename(lock_path, aside)
    except OSError:
        return
    try:
        moved = os.lstat(aside)
        if moved.st_ino != st.st_ino or moved.st_size != 0:
            # A live marker took the name in between: give it back unless a newer one exists.
            with contextlib.suppress(FileExistsError):
                os.link(aside, lock_path)
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def _remove_own_sidecar(lock_path: Path) -> None:
    # A successor that took over our lease may already have written its own sidecar.
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        if json.loads(_sidecar(lock_path).read_text())["pid"] == os.getpid():
            _sidecar(lock_path).unlink()


@contextlib.contextmanager
def exclusive(
    lock_path: Path,
    *,
    timeout_s: float,
    purpose: str = "",
    lease_s: float = LEASE_S,
    on_wait: Callable[[Holder | None], None] | None = None,
) -> Iterator[HeldLock]:
    """Hold an exclusive cross-node lock on ``lock_path`` for the ``with`` body.

    Waits up to ``timeout_s`` seconds (raising :class:`LockTimeout` naming the holder);
    ``on_wait`` is called once with the current holder when the lock is busy, so a CLI can
    say whom it is waiting for.  Stale locks (dead holder on this host, no heartbeat for
    ``lease_s``, or an empty marker unchanged for ``lease_s``) are taken over automatically.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lease = SoftFileLease(str(lock_path), lease_duration=lease_s)
    start = time.monotonic()
    deadline = start + max(timeout_s, 0.0)
    poll = _POLL_FIRST_S
    told = False
    recordless: dict[tuple[int, int], float] = {}
    while True:
        try:
            lease.acquire(blocking=False)
            break
        except Timeout:
            pass
        _clear_recordless_marker(lock_path, recordless, lease_s)
        now = time.monotonic()
        if not told:
            told = True
            if on_wait is not None:
                on_wait(read_holder(lock_path))
        if now >= deadline:
            raise LockTimeout(lock_path, now - start, read_holder(lock_path), lease_s)
        # Jitter keeps many waiters that started together from polling in lockstep.
        time.sleep(min(poll * random.uniform(0.5, 1.0), max(deadline - now, 0.0)))
        poll = min(poll * 1.5, _POLL_MAX_S)
    held = HeldLock(path=lock_path, _lease=lease, waited_s=time.monotonic() - start)
    try:
        _write_sidecar(lock_path, lease, purpose)
        yield held
    finally:
        if not held.compromised:
            _remove_own_sidecar(lock_path)
        lease.release()
