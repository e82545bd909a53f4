"""The NVML sampler against a compiled stand-in library with NVML's signatures and structs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from inferx_slurm.runtime.gpumon import summarize

STUB = Path(__file__).parent / "stubs" / "nvml_stub.c"


@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvml") / "libnvidia-ml-stub.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(STUB)], check=True)
    return out


def standalone_sampler(tmp_path) -> Path:
    """The sampler as a job carries it: one file in the job dir, written by render()."""
    from conftest import local_recipe
    from inferx_slurm.job.render import GPUMON_SCRIPT, render

    job = render(local_recipe("mocker-1p1d.yaml"), str(tmp_path / "job"))
    script = tmp_path / "gpumon.py"
    script.write_text(job.files[GPUMON_SCRIPT])
    assert f"python3 {tmp_path / 'job' / GPUMON_SCRIPT}" in job.files["scripts/gpumon.sh"]
    return script


def sample(tmp_path, env_extra, duration="1.2"):
    out = tmp_path / "gpu.jsonl"
    # -I -S: no site-packages, no PYTHON* variables: a bare compute-node python3 runs it.
    subprocess.run(["python3", "-I", "-S", str(standalone_sampler(tmp_path)), str(out), "--interval", "0.2", "--duration", duration],
                   check=True, env={**__import__("os").environ, **env_extra}, timeout=30)
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def test_samples_every_gpu(tmp_path, nvml_lib):
    out, lines = sample(tmp_path, {"INFERX_NVML_LIB": str(nvml_lib)})
    assert lines[0]["nvml"] is True and lines[0]["gpus"] == 2
    samples = lines[1:]
    assert len(samples) >= 4
    assert samples[0]["gpus"] == [
        {"i": 0, "power_w": 300.0, "util_pct": 50.0, "mem_used_gb": 8.0},
        {"i": 1, "power_w": 310.0, "util_pct": 70.0, "mem_used_gb": 8.0},
    ]
    s = summarize(out, 0, time.time() + 1)
    assert s == {"gpus": 2, "avg_power_w_per_gpu": 305.0, "avg_util_pct": 60.0, "peak_mem_used_gb": 8.0}
    # a window with no samples has no data
    assert summarize(out, 0, 1) is None


def test_no_nvml_is_reported_not_fatal(tmp_path):
    out, lines = sample(tmp_path, {"INFERX_NVML_LIB": str(tmp_path / "missing.so")}, duration="0.2")
    assert lines == [{"t": lines[0]["t"], "host": lines[0]["host"], "nvml": False, "reason": lines[0]["reason"]}]
    assert "missing.so" in lines[0]["reason"]
    assert summarize(out, 0, time.time() + 1) is None


def test_results_fields_average_over_nodes(tmp_path):
    from inferx_slurm.runtime.gpumon import gpu_metrics

    def write(host, power, util, n):
        lines = [{"t": 1.0, "host": host, "nvml": True, "gpus": n}]
        lines += [{"t": t, "gpus": [{"i": i, "power_w": power, "util_pct": util, "mem_used_gb": 1.0} for i in range(n)]} for t in (10, 11, 12)]
        (tmp_path / f"gpu-{host}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    write("a", 400.0, 90.0, 4)
    write("b", 200.0, 30.0, 2)
    m = gpu_metrics(tmp_path, ["a", "b", "c"], 10, 12)
    assert set(m["gpu_nodes"]) == {"a", "b"}
    assert m["avg_gpu_power_w"] == pytest.approx((400 * 4 + 200 * 2) / 6)
    assert m["avg_gpu_util_pct"] == pytest.approx((90 * 4 + 30 * 2) / 6)
    assert gpu_metrics(tmp_path, ["a"], 100, 200) == {"gpu_nodes": {}, "avg_gpu_power_w": None, "avg_gpu_util_pct": None}
