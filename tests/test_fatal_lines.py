"""Log lines after which a live engine never becomes ready end the run as they are written."""

from __future__ import annotations

import time

from inferx_slurm.job.rendered import Step
from inferx_slurm.runtime.fatal_lines import TRACEBACK_WAIT_S, FatalLineWatch
from inferx_slurm.runtime.steps import RunningStep


def step(tmp_path, kind="worker"):
    st = Step(name="prefill-0.n0", kind=kind, role="prefill", index=0, node=0, script="scripts/prefill-0.sh")
    return RunningStep(step=st, host="node1", argv=["true"], log=tmp_path / f"{kind}.log")


def test_a_dead_side_channel_listener_is_a_fault_once_its_line_is_complete(tmp_path):
    s = step(tmp_path)
    w = FatalLineWatch()
    assert w.scan([s]) is None  # no log yet
    s.log.write_text("INFO loading weights\nException in thread nixl_hand")
    assert w.scan([s]) is None  # half a line is not a match yet, nor read twice
    with open(s.log, "a") as f:
        f.write("shake_listener:\nTraceback (most recent call last):\n")
    assert w.scan([s]) is None  # the traceback's last line, which says why, is not written yet
    with open(s.log, "a") as f:
        f.write('  File "zmq/sugar/socket.py", line 320, in bind\n'
                "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:20001')\nINFO more\n")
    fault = w.scan([s])
    assert fault is not None and fault.kind == "engine_fatal" and fault.step is s and fault.host == "node1"
    assert fault.message.startswith("prefill worker 0 on host node1: its NIXL side-channel listener died")
    assert ("Its log: Exception in thread nixl_handshake_listener: ... "
            "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:20001')") in fault.message


def test_a_fatal_line_without_its_exception_is_a_fault_a_few_seconds_later(tmp_path, monkeypatch):
    s = step(tmp_path)
    s.log.write_text("Exception in thread nixl_handshake_listener:\n")
    w = FatalLineWatch()
    assert w.scan([s]) is None
    clock = time.time() + TRACEBACK_WAIT_S + 0.1
    monkeypatch.setattr(time, "time", lambda: clock)
    fault = w.scan([s])
    assert fault is not None and fault.message.endswith("Its log: Exception in thread nixl_handshake_listener:")


def test_other_steps_and_ordinary_lines_are_not_faults(tmp_path):
    monitor, worker = step(tmp_path, kind="monitor"), step(tmp_path)
    monitor.log.write_text("Exception in thread nixl_handshake_listener:\n")
    worker.log.write_text("INFO NIXL handshake listener started\nWARNING Releasing expired KV blocks\n")
    assert FatalLineWatch().scan([monitor, worker]) is None
