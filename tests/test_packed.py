"""Packed sweeps: grouping into allocations and engine starts, the time plan, and runs on the
real local cluster (shared engine starts, a killed worker in one deployment, resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferx_slurm.errors import RecipeError
from inferx_slurm.sweeps.packing import check_time, pack
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import render
from inferx_slurm.sweeps.expand import expand

from conftest import LOCAL_RECIPES, REPO, local_recipe

GB200 = REPO / "recipes" / "disagg" / "gb200" / "minimax-m3-sweep.yaml"


def _engine_args(recipe: Recipe) -> list[str]:
    job = render(recipe, "/j", plan_recipe(recipe))
    return [t for rel, t in sorted(job.files.items()) if rel.startswith("scripts/prefill") or rel.startswith("scripts/decode")]


def test_gb200_ladder_packs_into_one_allocation_sized_by_the_largest():
    r = Recipe.load(GB200)
    deps = expand(r)
    (p,) = pack(r, deps)
    # 4P1D DEP8->DEP16: 4 x 2 prefill nodes + 4 decode nodes
    assert p.nodes == 12 and max(plan_recipe(d.recipe).total_nodes for d in deps) == 12
    assert sorted(d.name for d in p.sweep_points) == sorted(d.name for d in deps)
    # scenarios decide max_model_len and the split-off points change max-num-seqs: no sharing
    assert len(p.starts) == len(deps) == 10


def test_benchmark_only_differences_share_one_start_and_scenarios_only_when_opted_in():
    base = Recipe.load(GB200).with_overrides({
        "sweep.topologies": ["1P1D TP4->TEP8"],
        "sweep.overrides": [{"match": {"concurrency": [256, 1024]}, "set": {"benchmark.requests_per_concurrency": 2}}],
        # explicit ports, which a sweep spreads per point: a start's deployments take its owner's
        "frontend.http_port": 8000, "placement.port_base": 20000,
    })
    deps = expand(base)
    assert len(deps) == 4  # 2 scenarios x (low, high concurrency)
    (p,) = pack(base, deps)
    assert len(p.starts) == 2 and all(len(s.sweep_points) == 2 for s in p.starts)
    for s in p.starts:
        # one engine for all of a start's points: graphs up to the highest concurrency
        assert s.engine.benchmark.concurrency == [1, 4, 16, 64, 256, 1024]
        assert len({(d.recipe.frontend.http_port, d.recipe.placement.port_base) for d in s.sweep_points}) == 1
        own = [_engine_args(d.recipe.model_copy(update={"benchmark": s.engine.benchmark})) for d in s.sweep_points]
        assert own[0] == own[1]

    shared = base.with_overrides({"sweep.share_max_model_len": True})
    (p,) = pack(shared, expand(shared))
    (s,) = p.starts
    assert len(s.sweep_points) == 4
    # served with the longest scenario's length (8k1k: 9216 + headroom, block 128)
    assert "--max-model-len 9472" in _engine_args(s.engine)[0]


def test_time_limit_too_short_for_the_estimates_is_refused_before_submit(tmp_path):
    r = local_recipe("mocker-sweep.yaml", **{"sweep.estimate": {"load_s": 600, "point_s": 300}, "slurm.time": "00:20:00"})
    with pytest.raises(RecipeError) as e:
        check_time(r, pack(r, expand(r)))
    assert e.value.field == "slurm.time"
    short = tmp_path / "short.yaml"
    short.write_text((LOCAL_RECIPES / "mocker-sweep.yaml").read_text().replace('time: "00:20:00"', 'time: "00:03"'))
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(short), "--pack", "--results-dir", str(tmp_path / "r2")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "slurm.time" in out.stderr and "sweep.estimate.load_s" in out.stderr and "at least 00:04:00" in out.stderr
    assert not (tmp_path / "r2").exists()


# --- on the local cluster ------------------------------------------------------------------


def _launch(args, cwd, timeout=400):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _frontend_starts(root: Path) -> int:
    return sum(f.read_text().count("[inferx] frontend host=") for f in root.glob("*/logs/frontend.log"))


@pytest.mark.cluster
@pytest.mark.e2e
def test_packed_sweep_shares_one_engine_start(cluster, tmp_path):
    recipe = tmp_path / "sweep.yaml"
    doc = yaml_load(LOCAL_RECIPES / "mocker-sweep.yaml")
    doc["benchmark"]["concurrency"] = [1, 2]
    doc["sweep"].update({"mode": "packed", "share_max_model_len": True,
                         "overrides": [{"match": {"concurrency": 2}, "set": {"benchmark.requests_per_concurrency": 6}}]})
    recipe.write_text(json.dumps(doc))
    out = _launch([str(recipe), "--wait", "--results-dir", str(tmp_path / "res")], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    root = tmp_path / "res"
    runs = sorted(p.parent for p in root.glob("*/summary.json"))
    assert len(runs) == 4
    assert len({json.loads((r / "job.json").read_text())["job_id"] for r in runs}) == 1
    assert _frontend_starts(root) == 1
    shared = [r for r in runs if any(e["event"] == "engines shared" for e in json.loads((r / "status.json").read_text())["events"])]
    assert len(shared) == 3
    rows = [row for r in runs for row in json.loads((r / "summary.json").read_text())["rows"]]
    assert sorted((row["isl"], row["concurrency"], row["completed"], row["failed"]) for row in rows) == [
        (128, 1, 10, 0), (128, 2, 12, 0), (256, 1, 10, 0), (256, 2, 12, 0)]
    assert "points: 4 done, 0 running, 0 left of 4" in out.stdout


@pytest.mark.cluster
@pytest.mark.e2e
def test_killed_worker_fails_its_deployment_only_and_resume_reruns_it(cluster, tmp_path):
    long_scen = {"isl": 128, "osl": 512}
    doc = yaml_load(LOCAL_RECIPES / "mocker-sweep.yaml")
    doc["sweep"].update({"mode": "packed", "scenarios": [long_scen, {"isl": 256, "osl": 16}], "overrides": [
        {"match": {"scenario": long_scen}, "set": {"benchmark.min_requests": 400, "engine.args.speedup-ratio": 1}}]})
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(json.dumps(doc))
    root = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "inferx_slurm", "launch", str(recipe), "--wait", "--results-dir", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    victim = root / "local-mocker-sweep-1p1d-tp1-isl128-osl512"
    other = root / "local-mocker-sweep-1p1d-tp1-isl256-osl16"
    _wait_phase(victim, "benchmarking")
    pid = int((victim / "logs" / "decode-0.n0.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr

    st = json.loads((victim / "status.json").read_text())
    assert st["phase"] == "failed" and st["fault"] == "exited"
    diag = (victim / "diagnosis.txt").read_text()
    assert "decode worker 0" in diag and "SIGKILL" in diag and "host node2" in diag
    assert json.loads((victim / "summary.json").read_text())["partial"] is True
    assert json.loads((other / "status.json").read_text())["phase"] == "done"
    (row,) = json.loads((other / "summary.json").read_text())["rows"]
    assert row["completed"] == 20 and row["failed"] == 0
    assert "local-mocker-sweep-1p1d-tp1-isl128-osl512 FAILED" in stderr and "decode worker 0" in stderr
    assert "points: 1 done, 0 running, 1 left of 2" in stdout and f"--resume {root}" in stdout

    # Resume (the long point now short): only the failed point runs again, in a new dir.
    doc["sweep"]["overrides"] = []
    recipe.write_text(json.dumps(doc))
    out = _launch([str(recipe), "--wait", "--resume", str(root)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted local-mocker-sweep-1p1d-tp1-isl256-osl16" not in out.stdout
    again = root / "local-mocker-sweep-1p1d-tp1-isl128-osl512.2"
    assert json.loads((again / "status.json").read_text())["phase"] == "done"
    assert not (root / "local-mocker-sweep-1p1d-tp1-isl256-osl16.2").exists()
    assert (victim / "diagnosis.txt").exists()  # the failed attempt is kept
    assert "points: 2 done, 0 running, 0 left of 2" in out.stdout
    status = subprocess.run([sys.executable, "-m", "inferx_slurm", "status", str(root), "--json"], capture_output=True, text=True)
    p = json.loads(status.stdout)
    assert (p["done"], p["running"], p["left"], p["failed_runs"]) == (2, 0, 0, [])


def _wait_phase(run: Path, phase: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        p = run / "status.json"
        if p.exists() and json.loads(p.read_text())["phase"] == phase:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run.name} never reached {phase}")


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
