"""The production path, true to pyxis and GB200: one named container per node shared by every
step on it, Dynamo and NIXL installed into it and checked before weights load, discovery servers
run from real binaries on the host. pyxis and enroot do not exist here: the rendered flags are
checked against pyxis's documented options, and the same job shape runs bare on the local cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inferx_slurm import RunError, submit
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import infra_body, render

from conftest import GB200_SITE, REPO, local_recipe

GB200 = REPO / "recipes/disagg/gb200/minimax-m3-2p1d-dep8-dep16-1k1k.yaml"
PROBE = REPO / "inferx_slurm/runtime/identity_probe.py"
DYNAMO_PY = os.environ.get("INFERX_DYNAMO_PYTHON", "/opt/dynamo-venv/bin/python")

# pyxis's srun options (its `srun --help` and wiki, Usage page); a flag outside this list would
# make srun refuse the step on a real cluster.
PYXIS_OPTIONS = {
    "--container-image", "--container-mounts", "--container-workdir", "--container-name", "--container-save",
    "--container-mount-home", "--no-container-mount-home", "--container-remap-root", "--no-container-remap-root",
    "--container-entrypoint", "--no-container-entrypoint", "--container-writable", "--container-readonly",
    "--container-env",
}


def dry_run_sruns(path: Path) -> list[list[str]]:
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(path), "--dry-run", "--site", str(GB200_SITE)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("srun ")]


def opt(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)


def test_gb200_dry_run_one_named_container_per_node_shared_by_its_steps():
    sruns = dry_run_sruns(GB200)
    by_node: dict[str, set[str]] = {}
    kinds: dict[str, set[str]] = {}
    for argv in sruns:
        node = opt(argv, "--nodelist")
        step = opt(argv, "--job-name")
        for a in argv:
            if a.startswith("--container") or a.startswith("--no-container"):
                assert a.split("=", 1)[0] in PYXIS_OPTIONS, f"{step}: {a} is no pyxis option"
        name = opt(argv, "--container-name")
        if step == "infra" or step.startswith("gpumon"):
            # etcd/NATS and the sampler run on the host: the engine image has neither.
            assert name is None and opt(argv, "--container-image") is None, step
            continue
        assert name is not None and "--no-container-mount-home" in argv and "--container-writable" in argv, step
        assert "/lustre/staged-models:/lustre/staged-models" in opt(argv, "--container-mounts")
        # the squashfs `launch` imports into the site's image dir before submitting, not the registry URI
        assert re.fullmatch(r"/lustre/images/.+\.sqsh", opt(argv, "--container-image")), step
        by_node.setdefault(node, set()).add(name)
        kinds.setdefault(node, set()).add(step.split(".")[0].split("-")[0])
    assert len(by_node) == 8
    assert all(len(names) == 1 for names in by_node.values()), by_node
    assert len({n for names in by_node.values() for n in names}) == 8  # one per node, none shared across nodes
    # every node installs Dynamo first; node 0 also runs the frontend; every node runs a worker
    assert all({"install", "prefill" if int(n[5:-1]) < 4 else "decode"} <= k for n, k in kinds.items())
    assert "frontend" in kinds["<node0>"]


def test_dry_run_serves_the_staged_copy_offline(tmp_path):
    """With the site's stage dir, `launch` stages the checkpoint and serves the copy with the Hub
    switched off; the dry run shows exactly that, without copying anything."""
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(GB200), "--dry-run", "--site", str(GB200_SITE)],
                         capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "MODEL_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    engines = [line for line in out.stdout.splitlines() if "-m dynamo.vllm" in line]
    assert engines and all("--model /lustre/staged-models/MiniMax-M3-FP8 " in line for line in engines)
    assert "export HF_HUB_OFFLINE=1" in out.stdout and "export INFERX_MODEL_PATH=/lustre/staged-models/MiniMax-M3-FP8" in out.stdout


def test_gb200_scripts_install_dynamo_with_nixl_and_preflight_it():
    r = Recipe.load(GB200)
    job = render(r, "/j")
    install = job.files["scripts/install.sh"]
    assert "ai-dynamo==1.6.1" in install and "ai-dynamo-runtime==1.6.1" in install and "nixl" in install
    worker = job.files["scripts/decode-0.sh"]
    probe = next(line for line in worker.splitlines() if "identity_probe.py" in line)
    assert "--require vllm,dynamo,nixl" in probe and "'image vllm/vllm-openai:minimax-m3'" in probe
    assert worker.index("identity_probe.py") < worker.index("exec python3 -m dynamo.vllm")  # before weights load
    assert [s.node for s in job.steps if s.kind == "install"] == list(range(8))
    subprocess.run(["bash", "-n"], input=install, text=True, check=True)


def test_infra_runs_real_binaries_from_the_bin_dir(tmp_path):
    bins = tmp_path / "bins"
    subprocess.run(["bash", str(REPO / "setup_scripts/provision_infra_bins.sh"), str(bins)], check=True, capture_output=True)
    assert os.access(bins / "etcd", os.X_OK) and os.access(bins / "nats-server", os.X_OK)
    r = local_recipe("mocker-1p1d.yaml", **{"frontend.discovery": "etcd+nats", "frontend.infra_bin_dir": str(bins)})
    body = infra_body(r)
    assert f"{bins}/etcd" in body and f"{bins}/nats-server" in body
    missing = local_recipe("mocker-1p1d.yaml", **{"frontend.discovery": "etcd+nats", "frontend.infra_bin_dir": str(tmp_path / "none")})
    check = infra_body(missing).splitlines()[0]
    out = subprocess.run(["bash", "-c", check], capture_output=True, text=True)
    assert out.returncode == 1 and "etcd not found in frontend.infra_bin_dir" in out.stderr and "provision_infra_bins.sh" in out.stderr


def probe(tmp_path: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([DYNAMO_PY, str(PROBE), "--out", str(tmp_path / "p.json"), "--backend", "mocker", "--model", "m", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_preflight_names_the_image_and_the_missing_piece(tmp_path):
    out = probe(tmp_path, "--require", "dynamo,nixl", "--where", "image vllm-runtime:0.9.0-minimax-m3-dev.1")
    assert out.returncode == 4
    assert "NIXL is not available in image vllm-runtime:0.9.0-minimax-m3-dev.1" in out.stderr
    assert "Dynamo" not in out.stderr.split("NIXL")[0]  # Dynamo is there; only NIXL is named
    # NIXL needs CUDA/UCX to exist; its smallest stand-in is a package whose bindings import.
    stub = tmp_path / "stub" / "nixl"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "_api.py").write_text("class nixl_agent:\n    pass\n")
    ok = probe(tmp_path, "--require", "dynamo,nixl", env={"PYTHONPATH": str(stub.parent)})
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken" / "nixl"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "_api.py").write_text("raise ImportError('libnixl.so: cannot open shared object file')\n")
    bad = probe(tmp_path, "--require", "nixl", env={"PYTHONPATH": str(broken.parent)})
    assert bad.returncode == 4 and "libnixl.so" in bad.stderr and json.loads((tmp_path / "p.json").read_text())["missing"]


@pytest.mark.cluster
@pytest.mark.e2e
def test_missing_nixl_ends_a_local_run_within_seconds(cluster, tmp_path):
    """The GB200 job shape, bare: Dynamo installed into each node's environment first, etcd and
    NATS from a provisioned bin dir, then a worker environment without NIXL stops the run at
    the preflight, before any weights load, with the seed's diagnosis."""
    bins = tmp_path / "bins"
    subprocess.run(["bash", str(REPO / "setup_scripts/provision_infra_bins.sh"), str(bins)], check=True, capture_output=True)
    r = local_recipe("mocker-1p1d.yaml", **{
        "engine.dynamo_install": "1.6.1", "engine.require_nixl": True,
        "frontend.discovery": "etcd+nats", "frontend.infra_bin_dir": str(bins), "benchmark.stall_timeout_s": 60,
        "engine.startup_timeout_s": 600,
    })
    h = submit(r, tmp_path / "run")
    with pytest.raises(RunError) as e:
        h.wait(timeout=300, poll_s=0.2)
    st = json.loads((h.results_dir / "status.json").read_text())
    events = {ev["event"]: ev for ev in st["events"]}
    assert "infra ready" in events and "installed" in events
    assert "install done" in (h.results_dir / "logs" / "install.node0.log").read_text()
    assert "install done" in (h.results_dir / "logs" / "install.node1.log").read_text()
    d = st["diagnosis"]
    assert st["fault"] == "exited" and "NIXL is not available in the worker environment" in d and "Hint:" in d
    assert str(e.value) == d
    # From the workers' start to the diagnosis: the preflight's seconds (a minute on a busy
    # machine), not the 600 s start-up timeout that a load that hangs would run into.
    assert st["fault_at"] - (st["started"] + events["engines started"]["t"]) < 60
