"""What `launch` does before submitting: stage the model and import the image, once, and wire
both into what runs. Uses real files, real squashfs and the enroot stand-in in tests/bin."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path


from inferx_slurm.job.deployment import build_deployment
from inferx_slurm.job.dry_run import dry_run_text
from inferx_slurm.job.submit import import_image_for, prepare, stage
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import render
from inferx_slurm.job.srun import srun_argv
from inferx_slurm.sharedfs.staging import is_staged

BIN = Path(__file__).parent / "bin"


def make_model(root: Path) -> Path:
    src = root / "ckpt" / "Tiny-M"
    src.mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "qwen3_moe"}')
    # A real safetensors layout (launch reads the header to plan memory) with random weights.
    header = json.dumps({"w": {"dtype": "BF16", "shape": [128, 256], "data_offsets": [0, 1 << 16]}}).encode()
    (src / "model-00001.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + os.urandom(1 << 16))
    return src


def test_model_is_staged_and_served_offline(tmp_path):
    src = make_model(tmp_path)
    r = Recipe.from_dict({"name": "s", "profile": "gb200-nvl72", "topology": "1P1D TP4",
                          "model": {"path": str(src), "served_name": "m", "stage_dir": str(tmp_path / "staged")}})
    dep = build_deployment(r, tmp_path / "run")
    staged = dep.recipe
    path = Path(staged.model.path)
    assert path.parent == tmp_path / "staged" and not path.exists()  # building copies nothing
    stage(dep)
    assert is_staged(path)
    assert (path / "model-00001.safetensors").read_bytes() == (src / "model-00001.safetensors").read_bytes()
    assert staged.env["HF_HUB_OFFLINE"] == "1"
    worker = dep.job.files["scripts/decode-0.sh"]
    assert f"--model {path}" in worker and "export HF_HUB_OFFLINE=1" in worker
    assert render(staged, str(tmp_path / "run")).files == dep.job.files
    # a second launch reuses the stage
    again = build_deployment(r, tmp_path / "run2")
    assert Path(again.recipe.model.path) == path
    stage(again)
    assert is_staged(path)


def test_image_is_imported_once_and_given_to_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "imports.log"
    monkeypatch.setenv("INFERX_FAKE_ENROOT_LOG", str(log))
    r = Recipe.from_dict({"name": "i", "profile": "gb200-nvl72", "topology": "1P1D TP4", "model": {"path": "org/m"},
                          "container": {"runtime": "pyxis", "image": "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.6.1",
                                        "image_dir": str(tmp_path / "images"), "mounts": ["/lustre:/lustre"]}})
    for n in range(2):
        dep = build_deployment(r, tmp_path / f"run{n}")
        results, job = prepare(dep), dep.job
        import_image_for(r, results)
        image = json.loads((results / "image.json").read_text())
        assert image["uri"] == r.container.image
        sqsh = Path(image["path"])
        assert sqsh.parent == tmp_path / "images" and sqsh.suffix == ".sqsh"
        assert subprocess.run(["unsquashfs", "-l", str(sqsh)], capture_output=True).returncode == 0
        worker = next(st for st in job.steps if st.kind == "worker")
        argv = srun_argv(r, worker, "n1", str(results), image["path"])
        assert f"--container-image={sqsh}" in argv
        assert f"--container-mounts={results}:{results},/lustre:/lustre" in argv
        # the GPU sampler runs on the host, outside the image
        monitor = next(st for st in job.steps if st.kind == "monitor")
        assert not any(a.startswith("--container") for a in srun_argv(r, monitor, "n1", str(results), image["path"]))
    assert len(log.read_text().splitlines()) == 1  # imported once, reused the second time
    assert "docker://nvcr.io#nvidia/ai-dynamo/vllm-runtime:0.6.1" in log.read_text()


def test_dry_run_writes_and_submits_nothing(tmp_path):
    r = Recipe.from_dict({"name": "d", "topology": "2P1D DEP8->DEP16", "profile": "gb200-nvl72", "model": {"path": "org/m"}})
    text = dry_run_text(r, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # infra + frontend, 2 prefill workers x 2 nodes, decode x 4 nodes, a GPU sampler per node,
    # a NIXL fabric probe on each of the 4 prefill and 4 decode nodes
    assert "#SBATCH --nodes=8" in text and text.count("srun --overlap") == 2 + 2 * 2 + 4 + 8 + 4 + 4


def test_cli_launch_dry_run_and_bad_recipe(tmp_path):
    good = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", "recipes/disagg/gb200/minimax-m3-sweep.yaml", "--dry-run"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert good.returncode == 0, good.stderr
    # 4 topologies x 2 scenarios, and the TP4->TEP8 high-concurrency override splits 2 more off
    assert good.stdout.count("# ---- sbatch script") == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nmodel: {path: m}\ntopology: 1P1D TP4\nengine: {backend: tgi}\n")
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(bad), "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "engine.backend" in out.stderr and "'vllm', 'sglang', 'trtllm' or 'mocker'" in out.stderr


def test_no_slurm_here_is_a_clear_error(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("name: n\nmodel: {path: m}\ntopology: 1P1D TP1\n")
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(r), "--results-dir", str(tmp_path / "res")],
                         capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert out.returncode == 1 and "sbatch not found" in out.stderr and "--remote" in out.stderr
    assert not (tmp_path / "res").exists()
