"""The GPU sampler against a compiled stand-in for NVML (its signatures and structs) and a
stand-in `amdsmi` package (its functions and return shapes)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from inferx_slurm.runtime.gpumon import summarize

STUB = Path(__file__).parent / "stubs" / "nvml_stub.c"
STANDINS = Path(__file__).parent / "standins"


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


def sample(tmp_path, env_extra, duration="1.2", isolated=True):
    out = tmp_path / "gpu.jsonl"
    # -I -S: no site-packages, no PYTHON* variables: a bare compute-node python3 runs it. An AMD
    # node's python3 finds amdsmi on its path (here PYTHONPATH names the stand-in).
    flags = ["-I", "-S"] if isolated else ["-S"]
    subprocess.run(["python3", *flags, str(standalone_sampler(tmp_path)), str(out), "--interval", "0.2", "--duration", duration],
                   check=True, env={**__import__("os").environ, **env_extra}, timeout=30)
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def energy_rate(samples, gpu):
    """Watts the energy counter advanced at between the first and last sample."""
    a, b = samples[0], samples[-1]
    return (b["gpus"][gpu]["energy_j"] - a["gpus"][gpu]["energy_j"]) / (b["t"] - a["t"])


def test_samples_every_gpu(tmp_path, nvml_lib):
    out, lines = sample(tmp_path, {"INFERX_NVML_LIB": str(nvml_lib)})
    assert lines[0]["nvml"] is True and lines[0]["gpus"] == 2 and lines[0]["source"] == "nvml"
    samples = lines[1:]
    assert len(samples) >= 4
    assert [{k: v for k, v in g.items() if k != "energy_j"} for g in samples[0]["gpus"]] == [
        {"i": 0, "power_w": 300.0, "util_pct": 50.0, "mem_used_gb": 8.0},
        {"i": 1, "power_w": 310.0, "util_pct": 70.0, "mem_used_gb": 8.0},
    ]
    # NVML's total-energy counter (mJ) read as J: it advances at the stand-in's power
    assert energy_rate(samples, 0) == pytest.approx(300.0, rel=0.02) and energy_rate(samples, 1) == pytest.approx(310.0, rel=0.02)
    s = summarize(out, 0, time.time() + 1)
    assert s == {"gpus": 2, "avg_power_w_per_gpu": 305.0, "avg_util_pct": 60.0, "peak_mem_used_gb": 8.0}
    # a window with no samples has no data
    assert summarize(out, 0, 1) is None


def test_a_gpu_without_an_energy_counter_still_reports_power(tmp_path, nvml_lib):
    _, lines = sample(tmp_path, {"INFERX_NVML_LIB": str(nvml_lib), "INFERX_NVML_STUB_NO_ENERGY": "1"}, duration="0.5")
    assert lines[1]["gpus"][0] == {"i": 0, "power_w": 300.0, "util_pct": 50.0, "mem_used_gb": 8.0}


def test_no_gpu_library_is_reported_not_fatal(tmp_path):
    out, lines = sample(tmp_path, {"INFERX_NVML_LIB": str(tmp_path / "missing.so")}, duration="0.2")
    assert lines == [{"t": lines[0]["t"], "host": lines[0]["host"], "nvml": False, "reason": lines[0]["reason"]}]
    # both libraries were tried, and each says why it could not be used
    assert "missing.so" in lines[0]["reason"] and "amdsmi: No module named 'amdsmi'" in lines[0]["reason"]
    assert summarize(out, 0, time.time() + 1) is None


def test_amd_gpus_through_amdsmi(tmp_path):
    env = {"INFERX_NVML_LIB": str(tmp_path / "missing.so"), "PYTHONPATH": str(STANDINS)}
    out, lines = sample(tmp_path, env, isolated=False)
    assert lines[0]["source"] == "amdsmi" and lines[0]["nvml"] is False and lines[0]["gpus"] == 2
    samples = lines[1:]
    assert [{k: v for k, v in g.items() if k != "energy_j"} for g in samples[0]["gpus"]] == [
        {"i": 0, "power_w": 700.0, "util_pct": 80.0, "mem_used_gb": 150.0},
        {"i": 1, "power_w": 750.0, "util_pct": 90.0, "mem_used_gb": 150.0},
    ]
    # energy = accumulator ticks x counter_resolution uJ: advancing at each GPU's power
    assert energy_rate(samples, 0) == pytest.approx(700.0, rel=0.02) and energy_rate(samples, 1) == pytest.approx(750.0, rel=0.02)
    assert summarize(out, 0, time.time() + 1)["avg_power_w_per_gpu"] == 725.0

    # An ASIC without the average reports the current socket power; a VM guest has no counter.
    (tmp_path / "na").mkdir()
    _, lines = sample(tmp_path / "na", {**env, "AMDSMI_STANDIN_POWER_NA": "1", "AMDSMI_STANDIN_NO_ENERGY": "1"}, duration="0.3", isolated=False)
    assert lines[1]["gpus"][1] == {"i": 1, "power_w": 750.0, "util_pct": 90.0, "mem_used_gb": 150.0}


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
