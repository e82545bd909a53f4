"""Cross-node locks on real processes: a holder that dies at the worst moment never wedges the
lock, and a live holder is never robbed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from inferx_slurm.sharedfs.locks import LockTimeout, exclusive, read_holder

_FORK = multiprocessing.get_context("fork")


def _create_then_die(lock: str) -> None:
    # What a holder killed between its exclusive create and writing its record leaves behind.
    os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    os.kill(os.getpid(), signal.SIGKILL)


def test_marker_left_empty_by_a_killed_holder_is_taken_over_after_one_lease(tmp_path):
    lock = tmp_path / ".m.lock"
    p = _FORK.Process(target=_create_then_die, args=(str(lock),))
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL and lock.stat().st_size == 0
    start = time.monotonic()
    with exclusive(lock, timeout_s=30, lease_s=1.0) as held:
        waited = time.monotonic() - start
        assert read_holder(lock).pid == os.getpid()
        assert not held.compromised
    assert 1.0 <= waited < 30
    assert list(tmp_path.iterdir()) == []  # nothing set aside is left behind


def _hold(lock: str, ready: str, hold_s: float) -> None:
    with exclusive(lock, timeout_s=5, lease_s=2.0):
        open(ready, "w").close()
        time.sleep(hold_s)


def test_live_holder_keeps_its_lock_past_many_leases(tmp_path):
    lock, ready = tmp_path / ".m.lock", tmp_path / "ready"
    p = _FORK.Process(target=_hold, args=(str(lock), str(ready), 8.0))
    p.start()
    try:
        while not ready.exists():
            time.sleep(0.01)
        with pytest.raises(LockTimeout) as err:
            with exclusive(lock, timeout_s=6.0, lease_s=2.0):
                pass
        assert f"pid {p.pid}" in str(err.value)
    finally:
        p.join()
    assert p.exitcode == 0
