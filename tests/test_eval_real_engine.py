"""The eval alone on the real engine (vLLM's CPU build serving the tiny Llama on the local
cluster), through `inferx-slurm ci --eval-only`: the tiny model's GSM8K score is near 0, so
threshold 0.5 fails with the accuracy exit code, its ::error:: and the step summary. The eval
after a benchmark point on the same engines, with threshold 0 passing, is part of the real-engine
runs in test_real_engine.py (the engine's own server and the Dynamo frontend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


from conftest import REPO
from test_evals import write_gsm8k

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

VLLM_PY = Path(os.environ.get("INFERX_VLLM_PYTHON", "/opt/vllm-venv/bin/python"))
AGG = REPO / "recipes" / "agg" / "local" / "vllm-1a.yaml"
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
