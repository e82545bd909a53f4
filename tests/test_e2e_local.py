"""End to end on the real local Slurm cluster: submit through submitit, Dynamo frontend and
mock prefill/decode engines as srun steps, aiperf benchmark, results table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inferx_slurm import submit

from conftest import LOCAL_RECIPES, local_recipe

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def squeue_empty(env) -> bool:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout
    return out.strip() == ""


def sacct_steps(job_id, env):
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True, env=env).stdout
    return [line.split("|") for line in out.splitlines() if line]


def test_1p1d_mocker_end_to_end(cluster, tmp_path):
    # A 1 s stall bound: the client's start-up and its wrap-up after the last answer (seconds
    # of exporting, no traffic) must not read as a stalled deployment.
    recipe = local_recipe("mocker-1p1d.yaml", **{"benchmark.stall_timeout_s": 1})
    handle = submit(recipe, tmp_path / "run")
    summary = handle.wait(timeout=300)
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
    handle._wait_slurm_end(15)
    assert handle.slurm_state() == "COMPLETED"
    assert squeue_empty(cluster.env)
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(d)], capture_output=True, text=True, check=True).stdout
    assert "tok/s/gpu" in out and f"requests through prefill and decode: {total}" in out


def test_2p1d_with_multi_node_decode_and_etcd_nats(cluster, tmp_path):
    recipe = local_recipe("mocker-2p1d-dep8.yaml")
    handle = submit(recipe, tmp_path / "run")
    summary = handle.wait(timeout=300)
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
    handle._wait_slurm_end(15)
    assert handle.slurm_state() == "COMPLETED"


def test_sweep_goes_as_one_job_array(cluster, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "inferx_slurm", "launch", str(LOCAL_RECIPES / "mocker-sweep.yaml"), "--wait",
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
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
