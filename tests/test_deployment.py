"""One deployment, built once: a launch places, plans memory for and reads the checkpoint of
each deployment once, whether it prints it (--dry-run) or submits it."""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from checkpoints import minimax_m3_mxfp8
from inferx_slurm.cli import main
from inferx_slurm.job.deployment import build_deployment
from inferx_slurm.job.dry_run import dry_run_text
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.recipe.schema import Recipe

COUNTED = {
    "plan_recipe": "inferx_slurm.planning.placement",
    "plan_memory": "inferx_slurm.planning.feasibility",
    "read_checkpoint": "inferx_slurm.planning.checkpoint",
}


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    return minimax_m3_mxfp8(tmp_path_factory.mktemp("m3") / "MiniMax-M3-MXFP8", shards=4)


@pytest.fixture
def calls(monkeypatch):
    """Count every call of the planners and the checkpoint reader, wherever they were imported."""
    import inferx_slurm.commands.launch  # noqa: F401 - everything a launch imports, imported now
    import inferx_slurm.job.submit  # noqa: F401
    import inferx_slurm.sweeps.submit  # noqa: F401

    counts: collections.Counter = collections.Counter()
    for name, home in COUNTED.items():
        original = getattr(importlib.import_module(home), name)

        def counted(*a, _name=name, _original=original, **kw):
            counts[_name] += 1
            return _original(*a, **kw)

        for mod in [m for k, m in sys.modules.items() if k.startswith("inferx_slurm")]:
            if getattr(mod, name, None) is original:
                monkeypatch.setattr(mod, name, counted)
    return counts


def write_recipe(tmp_path: Path, m3: Path, **extra) -> Path:
    doc = {"name": "once", "profile": "h200", "topology": "1P1D TEP8->DEP8",
           "model": {"path": str(m3), "served_name": "minimax-m3"},
           "engine": {"backend": "vllm", "args": {"block-size": 128, "language-model-only": True}},
           "benchmark": {"scenarios": ["1k1k"], "concurrency": [64, 256]}, **extra}
    path = tmp_path / "once.yaml"
    path.write_text(json.dumps(doc))
    return path


def fake_sbatch(tmp_path: Path, monkeypatch) -> Path:
    """An sbatch that takes the job and runs nothing: the submit path ends at sbatch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "Submitted batch job 4242"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_dry_run_builds_each_deployment_once(tmp_path, m3, calls):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["launch", str(write_recipe(tmp_path, m3)), "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    assert "#SBATCH --nodes=2" in out.getvalue()
    assert dict(calls) == {"plan_recipe": 1, "plan_memory": 1, "read_checkpoint": 1}
    assert not (tmp_path / "r").exists()


def test_submit_up_to_sbatch_builds_each_deployment_once(tmp_path, m3, calls, monkeypatch):
    log = fake_sbatch(tmp_path, monkeypatch)
    res = tmp_path / "r"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["launch", str(write_recipe(tmp_path, m3)), "--results-dir", str(res)]) == 0
    assert dict(calls) == {"plan_recipe": 1, "plan_memory": 1, "read_checkpoint": 1}
    # What was built is what was written and submitted.
    paths = JobPaths(res)
    assert json.loads(paths.job.read_text())["job_id"] == "4242"
    assert len(log.read_text().splitlines()) == 1 and f"{paths.submitit}/" in log.read_text()
    assert json.loads(paths.plan.read_text())["total_nodes"] == 2
    assert sorted(p.name for p in paths.scripts.iterdir()) == ["decode-0.sh", "fabric-initiator.sh", "fabric-target.sh", "fabric_probe.py",
                                                               "frontend.sh", "gpumon.py", "gpumon.sh",
                                                               "identity_probe.py", "infra.sh", "ports.py", "prefill-0.sh"]


def test_sweep_reads_the_checkpoint_once_and_builds_each_deployment_once(tmp_path, m3, calls):
    sweep = {"topologies": ["1P1D TEP8->DEP8", "1P1D TEP8"], "concurrency": [64, 256]}
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["launch", str(write_recipe(tmp_path, m3, sweep=sweep)), "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    assert dict(calls) == {"plan_recipe": 2, "plan_memory": 2, "read_checkpoint": 1}


def test_dry_run_prints_the_deployment_it_is_given(tmp_path, m3):
    r = Recipe.load(write_recipe(tmp_path, m3))
    dep = build_deployment(r, tmp_path / "run")
    assert dep.paths == JobPaths(tmp_path / "run") and dep.memory is not None and not dep.memory.errors
    assert dep.sbatch["nodes"] == dep.plan.total_nodes == 2
    text = dry_run_text(dep)
    assert text == dry_run_text(r, tmp_path / "run")
    for rel, content in dep.job.files.items():
        if rel.endswith(".sh"):
            assert content.rstrip() in text


def test_staged_model_is_served_from_where_staging_copies_it(tmp_path):
    r = Recipe.from_dict({"name": "s", "profile": "gb200-nvl72", "topology": "1P1D TP4",
                          "model": {"path": "org/m", "stage_dir": str(tmp_path / "staged"), "weights_gb": 10}})
    dep = build_deployment(r, tmp_path / "run")
    assert dep.source.model.path == "org/m"
    assert dep.recipe.model.path == str(tmp_path / "staged" / "org--m") and dep.recipe.env["HF_HUB_OFFLINE"] == "1"
    assert dep.staging == {"org/m": str(tmp_path / "staged" / "org--m")}
    assert f"--model {tmp_path / 'staged' / 'org--m'}" in dep.job.files["scripts/decode-0.sh"]


def test_launch_json_starts_each_step_as_the_dry_run_shows_it(tmp_path):
    from inferx_slurm.job.launch import Launch, fill
    from inferx_slurm.job.srun import srun_argv
    from inferx_slurm.job.submit import prepare

    r = Recipe.from_dict({"name": "l", "profile": "gb200-nvl72", "topology": "1P1D TP4", "model": {"path": "org/m", "weights_gb": 10},
                          "container": {"runtime": "pyxis", "image": "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.6.1",
                                        "image_dir": str(tmp_path / "images")}})
    dep = build_deployment(r, tmp_path / "run")
    launch = Launch.read(Path(prepare(dep)) / JobPaths.LAUNCH)
    assert launch.first == ["infra"] and launch.nodes == dep.plan.total_nodes == 2
    # before the image is imported the steps get the recipe's URI, after it the .sqsh
    assert launch.image(dep.paths.root) == r.container.image
    dep.paths.image.write_text(json.dumps({"uri": r.container.image, "path": "/img/x.sqsh"}))
    for st, entry in zip(dep.job.steps, launch.steps):
        host = f"n{st.node}"
        assert entry["name"] == st.name and entry["kind"] == st.kind
        assert fill(entry["argv"], host=host, job_id="77", image=launch.image(dep.paths.root)) == \
            srun_argv(dep.recipe, st, host, dep.job_dir, "/img/x.sqsh", job_id="77")


def test_first_steps_start_from_launch_json_before_the_driver(tmp_path, monkeypatch):
    from inferx_slurm.job.submit import prepare
    from inferx_slurm.runtime.start import start_first
    from inferx_slurm.runtime.steps import stop_all

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "srun.calls"
    (bin_dir / "scontrol").write_text('#!/bin/sh\ncase "$2" in\n  hostnames) printf "n1\\nn2\\n" ;;\n'
                                      '  node) printf "NodeName=n1 NodeAddr=10.0.0.1\\nNodeName=n2 NodeAddr=10.0.0.2\\n" ;;\nesac\n')
    (bin_dir / "srun").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec sleep 30\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.setenv("SLURM_JOB_ID", "77")

    r = Recipe.from_dict({"name": "e", "profile": "local", "topology": "1P1D TP1", "engine": {"backend": "mocker"},
                          "model": {"path": "org/m"}, "frontend": {"discovery": "file"}})
    dep = build_deployment(r, tmp_path / "run")
    prepare(dep)
    early = start_first(dep.paths.root)
    try:
        assert early is not None and early.hosts == ["n1", "n2"] and early.kinds == ["frontend", "worker"]
        assert sorted(name for name, _ in early.steps) == ["decode-0.n0", "frontend", "prefill-0.n0"]
        assert "INFERX_ADDR_1=10.0.0.2" in dep.paths.nodes_env.read_text()
        status = json.loads(dep.paths.status.read_text())
        assert status["phase"] == "starting" and status["hosts"] == ["n1", "n2"] and status["started"] == early.t0
        for _ in range(50):
            if calls.exists() and len(calls.read_text().splitlines()) == 3:
                break
            time.sleep(0.1)
        started = calls.read_text()
        assert "--nodelist=n1" in started and "--nodelist=n2" in started and "{inferx:" not in started
    finally:
        if early is not None:
            stop_all(early.running, grace_s=1)
    # An allocation smaller than the plan starts nothing here: the driver diagnoses it.
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n1")
    (bin_dir / "scontrol").write_text('#!/bin/sh\nprintf "n1\\n"\n')
    assert start_first(dep.paths.root) is None
