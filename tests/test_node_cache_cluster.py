"""model.node_cache on the real local Slurm cluster: three nodes copy the staged model at once, a
second job copies nothing, a running job's copy is never evicted, and a node whose disk is too
small sends its role to the shared copy with a warning (or fails the job when required).

The local cluster's nodes share one disk, so each node gets its own cache dir: ``{node}`` in
model.node_cache.dir is replaced by the node's name."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inferx_slurm import submit
from inferx_slurm.job.handle import RunError
from inferx_slurm.job.phases import Phase
from inferx_slurm.sharedfs.node_cache import prune
from inferx_slurm.sharedfs.stage_manifest import MANIFEST_NAME, READY_NAME, is_staged

from conftest import LOCAL_RECIPES, local_recipe

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
HOSTS = ("node1", "node2", "node3")
# The local cluster's nodes share one network: a job that has just ended may still hold its
# ports for a moment, so each job here gets its own.
PORTS = iter(range(100))


@pytest.fixture(scope="module")
def model(cluster, tmp_path_factory) -> Path:
    """The local cluster's tiny model plus 30 MB of real bytes in 300 shards (the mock engine
    reads only its config and tokenizer)."""
    root = tmp_path_factory.mktemp("nc") / "tiny-shards"
    shutil.copytree(Path(cluster.state_dir) / "models" / "tiny-moe", root)
    rng = random.Random(0)
    for i in range(300):
        (root / f"weights-{i + 1:05d}-of-00300.dat").write_bytes(rng.randbytes(100_000))
    return root


def recipe(model: Path, base: Path, **extra):
    n = next(PORTS)
    return local_recipe("mocker-1p1d.yaml", **{
        "frontend.http_port": 18300 + n, "placement.port_base": 31000 + 100 * n,
        # prefill on node1, a decode worker over node2 and node3: every node copies
        "topology": "1P1D TP1->DEP8",
        "model.path": str(model), "model.served_name": "inferx/tiny-moe", "model.stage_dir": str(base / "stage"),
        "model.node_cache": {"dir": str(base / "cache" / "{node}"), "cap": "1G", "workers": 1},
        "benchmark.concurrency": [1], "benchmark.requests_per_concurrency": 4, "benchmark.min_requests": 4, **extra})


def outcomes(run: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in sorted((run / "node-cache").glob("node*.json"))]
    return {d["host"]: d for d in docs}


def events(run: Path) -> list[dict]:
    return json.loads((run / "status.json").read_text())["events"]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in (MANIFEST_NAME, READY_NAME)}


def read_path(run: Path, worker_node: str) -> str:
    """The model path the worker actually read on that node, as its identity probe recorded it."""
    return json.loads((run / "provenance" / f"{worker_node}.json").read_text())["model"]["path"]


def test_three_nodes_copy_at_once_a_second_job_copies_nothing_and_a_running_jobs_copy_stays(model, tmp_path):
    r = recipe(model, tmp_path)
    first = submit(r, tmp_path / "run1")
    first.wait(timeout=300)
    run1 = first.results_dir
    staged = tmp_path / "stage" / model.name
    got = outcomes(run1)
    assert sorted(got) == list(HOSTS)
    total = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file() and p.name not in (MANIFEST_NAME, READY_NAME))
    for host, o in got.items():
        path = Path(o["path"])
        assert path.parent == tmp_path / "cache" / host and is_staged(path)
        assert not o["reused"] and o["bytes_copied"] == o["total_bytes"] == total and o["problem"] is None
        assert files(path) == files(staged)
    # All three copied at the same time: each started before any had finished.
    assert max(o["started"] for o in got.values()) < min(o["ended"] for o in got.values())
    # Every engine read its own node's copy.
    assert read_path(run1, "prefill-0.n0") == got["node1"]["path"]
    assert read_path(run1, "decode-0.n0") == got["node2"]["path"]
    assert read_path(run1, "decode-0.n1") == got["node3"]["path"]
    ev = events(run1)
    ready = next(e for e in ev if e["event"] == "weights ready")
    assert set(ready["nodes"]) == set(HOSTS)
    assert not [e for e in ev if e["event"] == "node cache warning"]
    order = [e["event"] for e in ev]
    assert order.index("weights ready") < order.index("engines started")

    second = submit(recipe(model, tmp_path), tmp_path / "run2")
    run2 = second.results_dir
    deadline = time.time() + 240
    while second.status().phase not in (Phase.ready, Phase.benchmarking, Phase.done, Phase.failed) and time.time() < deadline:
        time.sleep(0.5)
    assert second.status().phase in (Phase.ready, Phase.benchmarking), second.status()
    # While the job runs its copy is pinned: pruning everything on its nodes keeps it.
    for host in HOSTS:
        res = prune(tmp_path / "cache" / host, everything=True)
        assert res.evicted == [] and res.kept == [Path(got[host]["path"]).name]
    second.wait(timeout=300)
    again = outcomes(run2)
    for host, o in again.items():
        assert o["reused"] and o["bytes_copied"] == 0 and o["files_copied"] == 0 and o["path"] == got[host]["path"]
    assert read_path(run2, "decode-0.n1") == got["node3"]["path"]
    # Both jobs have ended: nothing pins the copies any more.
    for host in HOSTS:
        assert prune(tmp_path / "cache" / host, everything=True).evicted == [Path(got[host]["path"]).name]


@pytest.fixture
def small_node3(tmp_path):
    """node3's cache on a 1 MB filesystem of its own, too small for the 30 MB model."""
    d = tmp_path / "cache" / "node3"
    d.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_node_too_small_sends_its_role_to_the_shared_copy_or_fails_the_job_when_required(model, tmp_path, small_node3):
    r = recipe(model, tmp_path)
    handle = submit(r, tmp_path / "optional")
    handle.wait(timeout=300)
    run = handle.results_dir
    staged = str(tmp_path / "stage" / model.name)
    got = outcomes(run)
    assert got["node3"]["path"] is None and got["node3"]["problem"] == "too_small"
    assert got["node1"]["path"] and got["node2"]["path"]
    warnings = [e["warning"] for e in events(run) if e["event"] == "node cache warning"]
    assert warnings[0].startswith("node 2 (node3) reads the shared copy: ") and "model.node_cache.cap" in warnings[0]
    assert warnings[1].startswith(f"decode workers read the shared copy {staged}")
    # prefill (node1) still reads its local copy; decode, one of whose nodes has none, the stage
    assert read_path(run, "prefill-0.n0") == got["node1"]["path"]
    assert read_path(run, "decode-0.n0") == read_path(run, "decode-0.n1") == staged
    assert list(small_node3.iterdir()) == [small_node3 / ".pins"], "nothing half-written is left on the small disk"

    strict = submit(recipe(model, tmp_path, **{"model.node_cache.mode": "required"}), tmp_path / "required")
    with pytest.raises(RunError):
        strict.wait(timeout=300)
    status = json.loads((strict.results_dir / "status.json").read_text())
    assert status["fault"] == "node_cache"
    assert "node cache on node3:" in status["diagnosis"] and "model.node_cache.cap" in status["diagnosis"]
    assert "Where: node_cache (step node-cache.node2), plan node 2, host node3" in status["diagnosis"]
    assert "engines started" not in [e["event"] for e in status["events"]]


def test_a_packed_sweep_copies_once_per_node(model, tmp_path):
    """Two deployments with their own engine starts in one allocation: the second start finds
    every node's copy complete."""
    doc = yaml.safe_load((LOCAL_RECIPES / "mocker-sweep.yaml").read_text())
    n = next(PORTS)
    doc["model"].update({"path": str(model), "stage_dir": str(tmp_path / "stage"),
                         "node_cache": {"dir": str(tmp_path / "cache" / "{node}"), "cap": "1G"}})
    doc["frontend"]["http_port"] = 18300 + n
    doc.setdefault("placement", {})["port_base"] = 31000 + 100 * n
    doc["benchmark"].update({"concurrency": [1], "min_requests": 4})
    doc["sweep"]["mode"] = "packed"
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(recipe), "--wait", "--results-dir",
                          str(tmp_path / "res")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted((p.parent for p in (tmp_path / "res").glob("*/summary.json")),
                  key=lambda r: min(o["started"] for o in outcomes(r).values()))
    assert len(runs) == 2
    assert len({json.loads((r / "job.json").read_text())["job_id"] for r in runs}) == 1  # one allocation
    first, second = outcomes(runs[0]), outcomes(runs[1])
    assert sorted(first) == sorted(second) == ["node1", "node2"]
    assert all(o["bytes_copied"] == o["total_bytes"] > 0 and not o["reused"] for o in first.values())
    assert all(o["bytes_copied"] == 0 and o["reused"] for o in second.values())
    assert read_path(runs[1], "decode-0.n0") == first["node2"]["path"]
