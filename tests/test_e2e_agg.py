"""Aggregated workers end to end on the real local Slurm cluster: mock engines that do prefill
and decode in one process, behind the Dynamo frontend; and GPU pinning on nodes that pose as AMD."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


from conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

AGG = REPO / "recipes" / "agg" / "local"


def launch_wait(recipe: Path, results: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(recipe), "--wait", "--results-dir", str(results), *extra],
                          capture_output=True, text=True, timeout=400, env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.mark.parametrize("name,workers,gpus", [("mocker-1a.yaml", 1, 1), ("mocker-2a.yaml", 2, 4)])
def test_aggregated_mocker_runs_with_launch_wait(cluster, tmp_path, name, workers, gpus):
    out = launch_wait(AGG / name, tmp_path / "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    d = tmp_path / "run"
    summary = json.loads((d / "summary.json").read_text())
    plan = json.loads((d / "plan.json").read_text())
    assert [w["role"] for w in plan["workers"]] == ["agg"] * workers and plan["agg_gpus"] == gpus
    assert plan["prefill_gpus"] == 0 and plan["decode_gpus"] == 0 and plan["total_nodes"] == 1
    rows = summary["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["failed"] == 0 and r["completed"] > 0
        # InferenceX fields: no prefill or decode GPUs; the aggregated ones carry the throughput.
        assert r["num_prefill_gpu"] == 0 and r["num_decode_gpu"] == 0 and r["num_agg_gpu"] == gpus
        assert r["tput_per_gpu"] == pytest.approx(r["total_token_throughput"] / gpus)
        assert r["output_tput_per_gpu"] == pytest.approx(r["output_throughput"] / gpus)
    # the same results table as a disaggregated run
    assert "A gpu" in out.stdout and "tok/s/gpu" in out.stdout
    total = sum(r["completed"] for r in rows)
    assert summary["served"]["agg_requests"] == total  # every answer came from an aggregated engine
    assert sum(summary["served"]["per_worker"].values()) == total
    for w in range(workers):
        log = (d / "logs" / f"agg-{w}.n0.log").read_text()
        assert "--disaggregation-mode agg" in (d / "scripts" / f"agg-{w}.sh").read_text()
        assert f"agg-{w} node_rank=0" in log
    logs = subprocess.run([sys.executable, "-m", "inferx_slurm", "logs", str(d), "--role", "agg"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert logs.returncode == 0, logs.stderr
    assert [line for line in logs.stdout.splitlines() if line.startswith("==> ")] == \
        [f"==> {d}/logs/agg-{w}.n0.log <==" for w in range(workers)]
    # the batch script submitit submitted is the one a dry run renders
    from inferx_slurm.job.sbatch import sbatch_script
    from inferx_slurm.planning.placement import plan_recipe
    from inferx_slurm.recipe.schema import Recipe

    job = json.loads((d / "job.json").read_text())
    r = Recipe.from_dict(json.loads((d / "recipe.json").read_text()))
    submitted = Path(job["submitit_folder"]) / f"{job['job_id']}_submission.sh"
    assert submitted.read_text() == sbatch_script(r, plan_recipe(r), d)


def test_ci_result_files_for_an_aggregated_run(cluster, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {"GITHUB_WORKSPACE": str(ws), "RESULT_FILENAME": "m3_agg", "DISAGG": "false", "SPEC_DECODING": "none"}
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "ci", str(AGG / "mocker-1a.yaml"), "--results-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=400, env={**os.environ, **env}, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # No _ctx_/_gen_: InferenceX's result step reads that as all GPUs prefill, none decode.
    doc = json.loads((ws / "agg_m3_agg_isl_128_osl_32_conc4_gpus_1.json").read_text())
    assert doc["disagg"] is False and doc["tp"] == 1 and doc["ep"] == 1 and doc["dp_attention"] == "false"
    assert doc["num_prefill_gpu"] == 0 and doc["num_decode_gpu"] == 0 and doc["num_gpus"] == 1 and doc["tput_per_gpu"] > 0
    assert (doc["pp"], doc["dcp_size"], doc["pcp_size"], doc["is_multinode"], doc["framework"]) == (1, 1, 1, False, "dynamo-mocker")
    assert (ws / "LOGS" / "isl_128_osl_32" / "results_concurrency_4_gpus_1.json").is_file()
    assert "prefill_tp" not in doc and doc["spec_decoding"] == "none"


def test_ci_refuses_labels_the_recipe_does_not_serve(tmp_path):
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "ci", str(AGG / "mocker-1a.yaml")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "DISAGG": "true"}, cwd=REPO)
    assert out.returncode == 2 and "DISAGG" in out.stdout + out.stderr and "1A TP1" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def amd_cluster(tmp_path_factory):
    """A second local cluster whose nodes pose as AMD: Slurm binds GPUs with ROCR_VISIBLE_DEVICES."""
    from inferx_slurm import localdev as lc

    sd = Path(os.environ.get("INFERX_LOCAL_CLUSTER_DIR", "/var/tmp/inferx-local-cluster") + "-amd")
    info = lc.up(nodes=1, gpus_per_node=4, state_dir=sd, gpu_vendor="amd")
    try:
        yield info
    finally:
        lc.down(sd)


def test_amd_workers_see_exactly_their_gpus(cluster, amd_cluster, tmp_path):
    """Slurm sets ROCR_VISIBLE_DEVICES for the step; each worker picks its GPUs within it by
    HIP_VISIBLE_DEVICES position, so the devices a worker sees are ROCR[HIP[i]]."""
    from inferx_slurm.recipe.schema import Recipe

    r = Recipe.load(AGG / "mocker-2a.yaml").with_overrides({"profile": "local-amd", "name": "local-mocker-2a-amd"})
    path = tmp_path / "amd.yaml"
    path.write_text(r.to_yaml())
    env = {**amd_cluster.env}
    out = launch_wait(path, tmp_path / "run", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = {}
    for w in range(2):
        log = (tmp_path / "run" / "logs" / f"agg-{w}.n0.log").read_text()
        m = re.search(r"gpus=(\S+) rocr=(\S+) hip=(\S+)", log)
        assert m, log[-2000:]
        cuda, rocr, hip = m.groups()
        assert rocr != "unset", "Slurm did not bind the GPUs through ROCR_VISIBLE_DEVICES"
        rocr_list = rocr.split(",")
        assert len(rocr_list) == 4  # the step sees the node's GPUs; the worker narrows them
        seen[w] = [rocr_list[int(i)] for i in hip.split(",")]
        assert cuda == hip  # vLLM's ROCm platform refuses the two when they differ
    assert seen == {0: ["0", "1"], 1: ["2", "3"]}


