"""Log lines after which a live engine never becomes ready end the run as they are written."""

from __future__ import annotations

from inferx_slurm.job.render import Step
from inferx_slurm.runtime.fatal_lines import FatalLineWatch
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
    fault = w.scan([s])
    assert fault is not None and fault.kind == "engine_fatal" and fault.step is s and fault.host == "node1"
    assert fault.message.startswith("prefill worker 0 on host node1: its NIXL side-channel listener died")
    assert "Log line: Exception in thread nixl_handshake_listener:" in fault.message
    assert w.scan([s]) is None  # what was read is not matched again


def test_other_steps_and_ordinary_lines_are_not_faults(tmp_path):
    monitor, worker = step(tmp_path, kind="monitor"), step(tmp_path)
    monitor.log.write_text("Exception in thread nixl_handshake_listener:\n")
    worker.log.write_text("INFO NIXL handshake listener started\nWARNING Releasing expired KV blocks\n")
    assert FatalLineWatch().scan([monitor, worker]) is None
