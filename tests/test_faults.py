"""Fault injection on the real local cluster: every fault ends the run within the bound, with a
diagnosis naming the right worker and node, logs kept, and no job or step left in Slurm."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from inferx_slurm import RunError, submit
from inferx_slurm import localdev as lc
from inferx_slurm.runtime import metrics
from inferx_slurm.runtime.ports import read_ports

from conftest import REPO, local_recipe

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

# From the fault to the job's end, teardown and Slurm's cleanup included. A fault that went
# unnoticed would end the run only by a slow path: a start-up timeout (60 s), the client's
# (300 s), Slurm marking a node down or the time limit (minutes); LONG's 5 s stall bound is the
# one fast path, and each test names the fault kind it expects, so that path cannot pass for
# another. 30 s stays clear of every slow path while a busy 2-core machine, where teardown alone
# has taken 15 s, still fits.
BOUND_S = 30.0
# From the fault to the driver recording it: a few of its 0.5 s polls and 1 s node checks,
# with room for a starved process.
DETECT_S = 10.0
# A benchmark long enough that faults land while it runs.
# Real-time mock engines (speedup 1): 400 requests of 512 tokens at concurrency 4 run for
# minutes, so every fault lands mid-benchmark however fast the machine is.
LONG = {"benchmark.concurrency": [4], "benchmark.min_requests": 400, "benchmark.scenarios": [{"isl": 128, "osl": 512}],
        "benchmark.stall_timeout_s": 5, "engine.args.speedup-ratio": 1}
SLOW = str(REPO / "tests" / "data" / "slow_start.sh")


def slow(role: str, seconds: int) -> dict:
    return {"setup_scripts": [SLOW], f"engine.{role}.env": {"INFERX_TEST_START_DELAY": str(seconds)}}


def wait_phase(results_dir, phases, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        p = results_dir / "status.json"
        if p.exists():
            st = json.loads(p.read_text())
            if st["phase"] in phases:
                return st
            assert st["phase"] != "failed", st.get("diagnosis")
        time.sleep(0.1)
    raise AssertionError(f"never reached {phases}")


def wait_tokens(run, timeout=240):
    """Until the frontend has streamed output tokens: the client is past its start-up (tens of
    seconds on a busy machine) and the engines are generating."""
    end = time.time() + timeout
    while time.time() < end:
        port = read_ports(run / "ports" / "frontend.env").get("INFERX_HTTP_PORT")
        nodes = dict(line.split("=", 1) for line in (run / "nodes.env").read_text().splitlines() if "=" in line)
        text = metrics.scrape(f"http://{nodes['INFERX_ADDR_0']}:{port}/metrics") if port else None
        if text and metrics.counter_total(text, ("dynamo_frontend_output_tokens_total",)) > 0:
            return
        time.sleep(0.2)
    raise AssertionError("the frontend streamed no tokens")


def wait_file(path, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def finish(handle, t_fault, env):
    """Wait for the job to end; return (seconds from fault to job end, status doc)."""
    with pytest.raises(RunError) as e:
        handle.wait(timeout=120, poll_s=0.2)
    handle.wait_slurm_end(30)
    t_end = time.time()
    st = json.loads((handle.results_dir / "status.json").read_text())
    assert handle.slurm_state() in {"FAILED", "CANCELLED", "COMPLETING"}, handle.slurm_state()
    assert str(e.value) == st["diagnosis"]
    elapsed = t_end - t_fault
    record(handle, st, elapsed)
    assert st["fault_at"] - t_fault < DETECT_S, st["fault_at"] - t_fault
    if st.get("fault") != "node_down":  # a dead node's job completes once the node is back
        assert squeue_empty(env)
    return elapsed, st


def squeue_empty(env, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if not subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env).stdout.strip():
            return True
        time.sleep(0.2)
    return False


def record(handle, st, elapsed):
    # The measured times go to a file next to the results, printed with -s for the record.
    line = {"fault": st.get("fault"), "fault_to_job_end_s": round(elapsed, 2),
            "detected_after_s": round(st["updated"] - st.get("fault_at", st["updated"]), 2)}
    print(f"\nFAULT-TIMING {json.dumps(line)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_taken_recipe_port_is_refused_naming_its_holder(cluster, tmp_path):
    # This test process holds the port the recipe names: the frontend's port line refuses it on
    # the node, before the frontend starts, naming the holder.
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        h = submit(local_recipe("mocker-1p1d.yaml", **{"frontend.http_port": port}), tmp_path / "run")
        with pytest.raises(RunError) as e:
            h.wait(timeout=120, poll_s=0.2)
    st = json.loads((h.results_dir / "status.json").read_text())
    me = open("/proc/self/comm").read().strip()
    assert st["fault"] == "exited" and str(e.value) == st["diagnosis"]
    d = st["diagnosis"]
    assert "frontend exited (exit code 3)" in d
    assert f"port {port} (frontend.http_port) is taken on node1 by pid {os.getpid()} ({me})" in d, d
    assert "leave that port field out (auto)" in d  # the hint
    assert not (h.results_dir / "ports" / "frontend.env").exists()


def test_kill_decode_worker_after_ready(cluster, tmp_path):
    h = submit(local_recipe("mocker-1p1d.yaml", **LONG), tmp_path / "run")
    wait_phase(h.results_dir, {"benchmarking"})
    pid = int(wait_file(h.results_dir / "logs" / "decode-0.n0.pid"))
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    elapsed, st = finish(h, t, cluster.env)
    assert elapsed < BOUND_S
    d = st["diagnosis"]
    assert st["fault"] == "exited"
    assert "decode worker 0" in d and "host node2" in d and "plan node 1" in d
    assert "SIGKILL" in d and "Last log lines" in d
    summary = h.results()
    assert summary["partial"] is True
    assert (h.results_dir / "logs" / "decode-0.n0.log").exists() and (h.results_dir / "diagnosis.txt").exists()
    assert not pid_alive(int((h.results_dir / "logs" / "prefill-0.n0.pid").read_text()))


def test_kill_worker_before_ready(cluster, tmp_path):
    # decode takes 30 s to come up; prefill dies while the deployment is still starting
    r = local_recipe("mocker-1p1d.yaml", **{**slow("decode", 30), **LONG})
    h = submit(r, tmp_path / "run")
    pid = int(wait_file(h.results_dir / "logs" / "prefill-0.n0.pid"))
    time.sleep(1.0)
    assert json.loads((h.results_dir / "status.json").read_text())["phase"] == "starting"
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    elapsed, st = finish(h, t, cluster.env)
    assert elapsed < BOUND_S
    assert st["fault"] == "exited" and "prefill worker 0" in st["diagnosis"] and "host node1" in st["diagnosis"]


def test_worker_that_never_becomes_ready(cluster, tmp_path):
    r = local_recipe("mocker-1p1d.yaml", **{**slow("decode", 600), "engine.decode.startup_timeout_s": 6, **LONG})
    h = submit(r, tmp_path / "run")
    wait_file(h.results_dir / "logs" / "decode-0.n0.pid")
    started = json.loads((h.results_dir / "status.json").read_text())
    t_deadline = started["started"] + 6
    elapsed, st = finish(h, t_deadline, cluster.env)
    assert elapsed < BOUND_S
    d = st["diagnosis"]
    assert st["fault"] == "not_ready" and "decode workers did not become ready within 6 s" in d and "0 of 1" in d
    assert "decode worker 0" in d and "host node2" in d


def test_benchmark_stall(cluster, tmp_path):
    h = submit(local_recipe("mocker-1p1d.yaml", **LONG), tmp_path / "run")
    wait_phase(h.results_dir, {"benchmarking"})
    wait_tokens(h.results_dir)  # a hang before the first request is the client's start-up, not a stall
    pid = int(wait_file(h.results_dir / "logs" / "decode-0.n0.pid"))
    t = time.time()
    os.kill(pid, signal.SIGSTOP)  # the engine hangs: requests stop completing
    try:
        elapsed, st = finish(h, t + 5, cluster.env)  # the stall bound (5 s) is the event
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert elapsed < BOUND_S
    assert st["fault"] == "stalled" and "no progress for 5 s" in st["diagnosis"]
    assert h.results()["partial"] is True


def test_a_client_that_fails_is_named_with_its_last_words(cluster, tmp_path):
    client = tmp_path / "client"
    client.write_text("#!/bin/sh\necho 'starting profile' \necho 'error: the tokenizer inferx/nope could not be loaded' >&2\nexit 1\n")
    client.chmod(0o755)
    h = submit(local_recipe("mocker-1p1d.yaml", **{"benchmark.client_command": str(client)}), tmp_path / "run")
    with pytest.raises(RunError):
        h.wait(timeout=240, poll_s=0.2)
    st = json.loads((h.results_dir / "status.json").read_text())
    assert st["fault"] == "client", st
    d = st["diagnosis"]
    assert "benchmark client exited with code 1" in d and "Last log lines:" in d
    assert "error: the tokenizer inferx/nope could not be loaded" in d, d


def test_node_dies(cluster, tmp_path):
    h = submit(local_recipe("mocker-1p1d.yaml", **LONG), tmp_path / "run")
    wait_phase(h.results_dir, {"benchmarking"})
    t = time.time()
    lc.kill_node("node2", cluster.state_dir)
    try:
        elapsed, st = finish(h, t, cluster.env)
    finally:
        lc.restart_node("node2", cluster.state_dir)
    assert elapsed < BOUND_S
    assert st["fault"] == "node_down"
    d = st["diagnosis"]
    assert "node node2" in d and "decode worker 0" in d and "decode-0.n0" in d
    assert squeue_empty(cluster.env, timeout=60)


def test_sigint_on_launch_cancels_cleanly(cluster, tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(local_recipe("mocker-1p1d.yaml", **LONG).to_yaml())
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferx_slurm", "launch", str(recipe_file), "--wait", "--results-dir", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **cluster.env},
    )
    wait_phase(out, {"benchmarking"})
    t = time.time()
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert squeue_empty(cluster.env)
    elapsed = time.time() - t
    assert proc.returncode != 0, text
    assert elapsed < BOUND_S, text
    st = json.loads((out / "status.json").read_text())
    assert st["phase"] == "failed" and st["fault"] == "cancelled", text
    assert "cancelling" in text and "FAILED" in text
    record(type("H", (), {"results_dir": out})(), st, elapsed)


def test_time_limit_ends_the_run_cleanly(cluster, tmp_path):
    # Two minutes of walltime, stop 90 s before it: the driver ends the run on its own clock,
    # before Slurm's kill, keeping logs and partial results. 30 s into the job leaves a busy
    # machine time to bring the deployment up first.
    r = local_recipe("mocker-1p1d.yaml", **{**LONG, "slurm.time": "2", "slurm.stop_before_limit_s": 90})
    h = submit(r, tmp_path / "run")
    wait_phase(h.results_dir, {"benchmarking"})
    with pytest.raises(RunError):
        h.wait(timeout=120, poll_s=0.2)
    st = json.loads((h.results_dir / "status.json").read_text())
    assert st["fault"] == "time_limit" and "raise slurm.time" in st["diagnosis"]
    # It stopped on its own clock, 30 s into the job (120 s limit, 90 s before it), not at
    # Slurm's kill: measured from the job's start as Slurm records it, since the driver itself
    # starts seconds later on a busy machine.
    start = subprocess.run(["sacct", "-X", "-n", "-P", "-j", h.job_id, "-o", "Start"], capture_output=True, text=True,
                           env={**os.environ, **cluster.env}).stdout.split()[0]
    into_job = st["fault_at"] - datetime.fromisoformat(start).timestamp()
    assert 30 <= into_job < 90, into_job
    assert h.results()["partial"] is True and squeue_empty(cluster.env)
