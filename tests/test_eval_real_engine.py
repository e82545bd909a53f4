"""The eval on the real engine (vLLM's CPU build serving the tiny Llama on the local cluster),
through `inferx-slurm ci`: after the benchmark point on the same engine (one model load), and
alone with --eval-only. The tiny model's GSM8K score is near 0, so threshold 0 passes and 0.5
fails with the accuracy exit code, its ::error:: and the step summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inferx_slurm.planning.ports import PortVar, ports_file
from inferx_slurm.runtime.ports import read_ports

from conftest import REPO
from test_evals import write_gsm8k

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

VLLM_PY = Path(os.environ.get("INFERX_VLLM_PYTHON", "/opt/vllm-venv/bin/python"))
AGG = REPO / "recipes" / "agg" / "local" / "vllm-1a.yaml"
DISAGG = REPO / "recipes" / "disagg" / "local" / "vllm-1p1d.yaml"
RUN_TIMEOUT_S = 900

if not VLLM_PY.exists():
    pytestmark.append(pytest.mark.skip(reason=f"no engine environment at {VLLM_PY}: bash setup_scripts/install_engines.sh"))


def recipe_with_eval(tmp_path: Path, threshold: float, base: Path = AGG) -> Path:
    doc = yaml.safe_load(base.read_text())
    doc["eval"] = {"tasks": [{"name": "gsm8k", "dataset": str(write_gsm8k(tmp_path / "gsm8k")), "num_fewshot": 1,
                              "threshold": threshold}],
                   "limit": 6, "max_tokens": 32, "stage_dir": str(tmp_path / "staged")}
    path = tmp_path / f"{base.stem}-eval-{threshold}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def ci(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(out / "summary.md")}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "inferx_slurm", "ci", str(recipe), "--out-dir", str(out),
                           "--results-dir", str(out / "run"), *extra],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO, env=env)


def event_t(status: dict, name: str) -> float:
    return next(e["t"] for e in status["events"] if e["event"] == name)


def test_eval_after_the_benchmark_on_the_same_engine_passes_threshold_zero(cluster, tmp_path):
    p = ci(recipe_with_eval(tmp_path, 0.0), tmp_path / "pass", "--eval")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    run = tmp_path / "pass" / "run"
    summary = json.loads((run / "summary.json").read_text())
    (row,) = summary["rows"]
    assert row["completed"] == 8 and row["failed"] == 0
    ev = summary["eval"]
    (t,) = ev["tasks"]
    assert t["task"] == "gsm8k" and t["n"] == 6 and t["threshold"] == 0.0 and t["passed"] is True and 0 <= t["score"] <= 1
    assert ev["concurrency"] == 2  # the highest benchmark concurrency
    # One engine start: the eval ran on the engine the benchmark used, after it.
    status = json.loads((run / "status.json").read_text())
    assert [e["event"] for e in status["events"]].count("engines started") == 1
    assert event_t(status, "eval") > max(e["t"] for e in status["events"] if e["event"] == "benchmark")
    assert len(list((run / "logs").glob("agg-0*.log"))) == 1
    # The dataset was staged and read from the staged copy; the answers came from the engine.
    assert (tmp_path / "staged" / "gsm8k" / "test.jsonl").is_file()
    samples = [json.loads(x) for f in (run / "eval").glob("samples_gsm8k_*.jsonl") for x in f.read_text().splitlines()]
    assert len(samples) == 6 and all(isinstance(s["resps"][0], str) for s in samples)
    for name in ("meta_env.json",):
        assert (tmp_path / "pass" / name).is_file()
    assert list((tmp_path / "pass").glob("results_gsm8k_*.json"))
    md = (tmp_path / "pass" / "summary.md").read_text()
    assert "### Accuracy (passed" in md and "### Results" in md
    print(md)
    print(f"eval seconds: {ev['seconds']}, job events: {[(e['event'], e['t']) for e in status['events']]}")


def test_eval_only_below_threshold_fails_with_the_accuracy_exit(cluster, tmp_path):
    p = ci(recipe_with_eval(tmp_path, 0.5), tmp_path / "fail", "--eval-only")
    assert p.returncode == 8, p.stdout[-4000:] + p.stderr[-4000:]
    summary = json.loads((tmp_path / "fail" / "run" / "summary.json").read_text())
    assert summary["rows"] == []  # eval only: no benchmark point
    (t,) = summary["eval"]["tasks"]
    assert t["passed"] is False and t["score"] < 0.5
    assert f"::error title=inferx-slurm accuracy (exit 8)::accuracy: gsm8k scored {t['score']:.4f}" in p.stdout
    assert "below its threshold 0.50" in p.stdout
    md = (tmp_path / "fail" / "summary.md").read_text()
    assert "FAILED: accuracy (exit 8)" in md and "**FAIL**" in md
    print(p.stdout[-3000:])
    print(md)


def test_eval_through_the_dynamo_frontend_of_a_disaggregated_deployment(cluster, tmp_path):
    """Prefill and decode workers behind the Dynamo frontend: the eval's chat requests go
    through the frontend and both workers, as the benchmark's do."""
    p = ci(recipe_with_eval(tmp_path, 0.0, DISAGG), tmp_path / "disagg", "--eval")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    summary = json.loads((tmp_path / "disagg" / "run" / "summary.json").read_text())
    (t,) = summary["eval"]["tasks"]
    assert t["n"] == 6 and t["passed"] is True and summary["rows"][0]["completed"] == 8
    frontend = read_ports(ports_file(str(tmp_path / "disagg" / "run"), "frontend"))[PortVar.http.value]
    assert summary["eval"]["url"].endswith(f":{frontend}")
    # Benchmark (8 + 1 warm-up) and eval (6) requests all went through prefill and decode.
    assert summary["served"]["through_prefill_and_decode"] == 15, summary["served"]
    print((tmp_path / "disagg" / "summary.md").read_text())
