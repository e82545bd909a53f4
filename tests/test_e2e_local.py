"""End to end on the real local Slurm cluster: submit through submitit, Dynamo frontend and
mock prefill/decode engines as srun steps, aiperf benchmark, results table."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from inferx_slurm import submit
from inferx_slurm.runtime.ports import bindable, read_ports

from conftest import LOCAL_RECIPES, local_recipe

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def squeue_empty(env) -> bool:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout
    return out.strip() == ""


def sacct_steps(job_id, env):
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True, env=env).stdout
    return [line.split("|") for line in out.splitlines() if line]


@contextlib.contextmanager
def held(port):
    """Hold the port for the block's duration (unless another process holds it already)."""
    with socket.socket() as s:
        # As servers bind: a closed connection's TIME_WAIT on the port must not stop us holding it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            s.bind(("0.0.0.0", port))
            s.listen()
        assert not bindable(port)
        yield


STALL_S = 4.0
# The client's quiet wrap-up in this test: after its last answer it exports, then idles this long.
WRAP_UP_S = STALL_S + 2


def quiet_spells(run):
    """Per benchmark point: (seconds from the client's start to its first request, seconds from
    its last answer to its exit), from the driver's events and the client's own records."""
    st = json.loads((run / "status.json").read_text())
    events = st["events"]
    out = []
    for i, ev in enumerate(events):
        if ev["event"] != "benchmark":
            continue
        point = run / "bench" / ev["scenario"] / f"c{ev['concurrency']}" / "profile_export.jsonl"
        recs = [json.loads(line)["metadata"] for line in point.read_text().splitlines() if line.strip()]
        first = min(r["request_start_ns"] for r in recs) / 1e9
        last = max(r["request_end_ns"] for r in recs) / 1e9
        out.append((first - (st["started"] + ev["t"]), st["started"] + events[i + 1]["t"] - last))
    return out


def test_1p1d_mocker_end_to_end(cluster, tmp_path):
    # The stall bound is shorter than the client's quiet start-up (aiperf boots for seconds
    # before its first request) and than its quiet wrap-up (exports, then WRAP_UP_S idle here):
    # neither may read as a stalled deployment, and both spells are measured below so the run
    # proves it. It is still 4x what the engines' scheduling noise on a busy machine can hold
    # the token counters still for.
    client = tmp_path / "aiperf-then-idle"
    aiperf = local_recipe("mocker-1p1d.yaml").benchmark.client_command
    client.write_text(f'#!/bin/sh\n"{aiperf}" "$@" || exit $?\nsleep {WRAP_UP_S}\n')
    client.chmod(0o755)
    recipe = local_recipe("mocker-1p1d.yaml", **{"benchmark.stall_timeout_s": STALL_S, "benchmark.client_command": str(client)})
    # Another program holds 18080, the port this recipe used to pin: the frontend takes a free
    # one on its node instead (frontend.http_port auto).
    with held(18080):
        handle = submit(recipe, tmp_path / "run")
        summary = handle.wait(timeout=600)
    assert read_ports(handle.results_dir / "ports" / "frontend.env")["INFERX_HTTP_PORT"] != 18080
    spells = quiet_spells(handle.results_dir)
    assert len(spells) == len(recipe.benchmark.concurrency)
    assert all(start > STALL_S and wrap_up > STALL_S for start, wrap_up in spells), spells
    rows = summary["rows"]
    assert [r["concurrency"] for r in rows] == recipe.benchmark.concurrency
    for r in rows:
        assert r["completed"] == recipe.benchmark.requests_for(r["concurrency"]) and r["failed"] == 0
        assert r["total_token_throughput"] > 0 and r["output_throughput"] > 0
        assert r["tput_per_gpu"] == pytest.approx(r["total_token_throughput"] / 2)
        assert r["mean_ttft_ms"] > 0 and r["intvty"] > 0
        # the local cluster has no NVML: the samplers ran and said so, and the row says "no data"
        assert r["avg_gpu_power_w"] is None and r["gpu_nodes"] == {}
    total = sum(r["completed"] for r in rows)
    served = summary["served"]
    # every request went through the prefill worker and then the decode worker
    assert served["through_prefill_and_decode"] == total
    assert served["per_worker"] == {"prefill-0": total, "decode-0": total}
    assert summary["partial"] is False
    d = handle.results_dir
    for f in ("plan.json", "recipe.yaml", "scripts/frontend.sh", "scripts/prefill-0.sh", "logs/frontend.log",
              "logs/prefill-0.n0.log", "logs/decode-0.n0.log", "summary.json"):
        assert (d / f).exists(), f
    assert (d / "bench" / "isl128-osl32" / "c4" / "profile_export_aiperf.json").exists()
    for host in ("node1", "node2"):
        first = json.loads((d / "logs" / f"gpu-{host}.jsonl").read_text().splitlines()[0])
        assert first["nvml"] is False and first["host"] == host
    status = json.loads((d / "status.json").read_text())
    assert status["phase"] == "done" and [e["event"] for e in status["events"]][-1] == "done"
    handle.wait_slurm_end(15)
    assert handle.slurm_state() == "COMPLETED"
    assert squeue_empty(cluster.env)
    # The batch script started the first steps before submitit's runner, and the driver adopted
    # them: as Slurm accounts the job, each step ran once (a step started twice, by the batch
    # script and again by the driver, would show twice).
    steps = subprocess.run(["sacct", "-n", "-P", "-j", handle.job_id, "-o", "JobName"], capture_output=True, text=True,
                           env={**os.environ, **cluster.env}, check=True).stdout.split()
    rendered = json.loads((d / "rendered.json").read_text())["steps"]
    assert sorted(n for n in steps if n not in ("batch", "extern", recipe.slurm.job_name or recipe.name)) == sorted(s["name"] for s in rendered)
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(d)], capture_output=True, text=True, check=True).stdout
    assert "tok/s/gpu" in out and f"requests through prefill and decode: {total}" in out


def test_2p1d_with_multi_node_decode_and_etcd_nats(cluster, tmp_path):
    recipe = local_recipe("mocker-2p1d-dep8.yaml")
    handle = submit(recipe, tmp_path / "run")
    summary = handle.wait(timeout=600)
    plan = json.loads((handle.results_dir / "plan.json").read_text())
    assert plan["total_nodes"] == 3
    dec = [w for w in plan["workers"] if w["role"] == "decode"][0]
    assert len(dec["nodes"]) == 2
    served = summary["served"]
    total = sum(r["completed"] for r in summary["rows"])
    assert total > 0 and served["through_prefill_and_decode"] == total
    # both prefill workers took part (round-robin)
    assert served["per_worker"]["prefill-0"] > 0 and served["per_worker"]["prefill-1"] > 0
    assert summary["rows"][0]["num_prefill_gpu"] == 4 and summary["rows"][0]["num_decode_gpu"] == 8
    # the two DEP2 prefill workers share node 0 but not GPUs
    logs = handle.results_dir / "logs"
    assert "host=node1 gpus=0,1 " in (logs / "prefill-0.n0.log").read_text()
    assert "host=node1 gpus=2,3 " in (logs / "prefill-1.n0.log").read_text()
    assert "gpus=0,1,2,3 " in (logs / "decode-0.n1.log").read_text()
    # the non-leader decode node ran its step for the worker's lifetime
    assert (handle.results_dir / "logs" / "decode-0.n1.log").exists()
    # Ports were taken on the nodes at start: the decode follower uses its leader's rendezvous,
    # and on this one-namespace cluster every listener of the deployment got a port of its own.
    ports = {p.name.removesuffix(".env"): read_ports(p) for p in (handle.results_dir / "ports").glob("*.env")}
    assert ports["decode-0.n1"]["INFERX_RENDEZVOUS_PORT"] == ports["decode-0.n0"]["INFERX_RENDEZVOUS_PORT"]
    listeners = [ports["frontend"]["INFERX_HTTP_PORT"], *(ports["infra"][k] for k in ("INFERX_ETCD_PORT", "INFERX_ETCD_PEER_PORT", "INFERX_NATS_PORT")),
                 *(ports[w][k] for w in ("prefill-0.n0", "prefill-1.n0", "decode-0.n0", "decode-0.n1")
                   for k in ("INFERX_SYSTEM_PORT", "INFERX_KV_SIDE_CHANNEL_PORT"))]
    assert len(set(listeners)) == len(listeners), ports
    handle.wait_slurm_end(15)
    assert handle.slurm_state() == "COMPLETED"


def test_sweep_goes_as_one_job_array(cluster, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "inferx_slurm", "launch", str(LOCAL_RECIPES / "mocker-sweep.yaml"), "--wait",
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    dirs = sorted((tmp_path / "results").glob("local-mocker-sweep-*/summary.json"))
    assert len(dirs) == 2
    ids = [json.loads((d.parent / "job.json").read_text())["job_id"] for d in dirs]
    array_ids = {i.split("_")[0] for i in ids}
    assert len(array_ids) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1"], ids
    isl = sorted(json.loads(d.read_text())["rows"][0]["isl"] for d in dirs)
    assert isl == [128, 256]
    for d in dirs:
        s = json.loads(d.read_text())
        # 10 requests per unit of concurrency (2) = 20
        assert s["rows"][0]["completed"] == 20 and s["served"]["through_prefill_and_decode"] == 20
    states = sacct_steps(ids[0], cluster.env)
    assert states and states[0][1] == "COMPLETED"
