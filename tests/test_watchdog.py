"""Diagnoses name the worker and node and carry a hint for known startup killers."""

from __future__ import annotations


import pytest

from inferx_slurm.job.rendered import Step
from inferx_slurm.job.phases import FaultKind
from inferx_slurm.runtime.steps import RunningStep
from inferx_slurm.runtime.watchdog import Fault, check_exits


def step_with_log(tmp_path, text, rc_cmd="exit 3"):
    log = tmp_path / "decode-1.n0.log"
    log.write_text(text)
    st = Step(name="decode-1.n0", kind="worker", role="decode", index=1, node=5, script="scripts/decode-1.sh")
    rs = RunningStep(step=st, host="gb-node-17", argv=["bash", "-c", rc_cmd], log=log)
    rs.start({})
    rs.proc.wait(timeout=10)
    return rs


@pytest.mark.parametrize("line, hint", [
    ("RuntimeError: NIXL is not available", "no NIXL bindings"),
    ("OSError: [Errno 116] Stale file handle: '/lustre/hf/models--x'", "stage the model first"),
    ("huggingface_hub.errors.LocalEntryNotFoundError: offline", "HF_HUB_OFFLINE=1"),
    ("Waiting on FileLock /shared/cache/torch_extensions/lock", "own TORCH_EXTENSIONS_DIR"),
])
def test_hints_for_startup_killers(tmp_path, line, hint):
    rs = step_with_log(tmp_path, f"[inferx] start\nloading...\n\x1b[31m{line}\x1b[0m\n")
    fault = check_exits([rs])
    assert fault is not None and fault.kind == "exited"
    text = fault.diagnosis()
    assert "decode worker 1 exited (exit code 3) on host gb-node-17" in text
    assert "plan node 5" in text and "Hint:" in text and hint in text
    assert line in text and "\x1b[" not in text  # colour codes are stripped from the tail


def test_signal_exit_is_named(tmp_path):
    rs = step_with_log(tmp_path, "ok\n", rc_cmd="kill -9 $$")
    text = check_exits([rs]).diagnosis()
    assert "killed by signal SIGKILL" in text and "Hint" not in text


def test_running_and_stopping_steps_are_not_faults(tmp_path):
    log = tmp_path / "x.log"
    st = Step(name="frontend", kind="frontend", node=0, script="s")
    rs = RunningStep(step=st, host="h", argv=["sleep", "5"], log=log)
    rs.start({})
    try:
        assert check_exits([rs]) is None
    finally:
        rs.proc.kill()
        rs.proc.wait()
    rs.stopping = True
    assert check_exits([rs]) is None


def test_fault_without_step_is_just_the_message():
    assert Fault(FaultKind.stalled, None, "benchmark made no progress for 5 s.").diagnosis() == "benchmark made no progress for 5 s."
