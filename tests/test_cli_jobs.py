"""`launch` without --wait, then `status`, `logs` and `cancel` by job id, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import LOCAL_RECIPES

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def cli(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_status_logs_cancel(cluster, tmp_path):
    env = {**os.environ, **cluster.env}
    recipe = tmp_path / "r.yaml"
    from inferx_slurm.recipe.schema import Recipe

    r = Recipe.load(LOCAL_RECIPES / "mocker-2p1d.yaml").with_overrides({"benchmark.min_requests": 400,
                                                                         "benchmark.scenarios": [{"isl": 128, "osl": 512}]})
    recipe.write_text(r.to_yaml())
    out = cli("launch", str(recipe), "--results-dir", "results/run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("job ")[1].split(",")[0]
    run = tmp_path / "results" / "run"
    end = time.time() + 240
    while time.time() < end:
        st = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
        if st.get("phase") == "benchmarking":
            break
        time.sleep(0.2)
    assert st.get("phase") == "benchmarking", st

    status = cli("status", job_id, cwd=tmp_path, env=env)
    assert status.returncode == 0 and "RUNNING" in status.stdout and "benchmarking" in status.stdout
    listing = cli("status", cwd=tmp_path, env=env)
    assert job_id in listing.stdout

    logs = cli("logs", job_id, "--role", "prefill", "--index", "1", cwd=tmp_path, env=env)
    assert logs.returncode == 0 and "prefill-1.n0.log" in logs.stdout and "decode" not in logs.stdout.split("<==")[0]
    assert "[inferx] prefill-1 node_rank=0" in logs.stdout

    t = time.time()
    cancel = cli("cancel", job_id, cwd=tmp_path, env=env)
    assert cancel.returncode == 0 and f"cancel requested for job {job_id}" in cancel.stdout
    while time.time() - t < 90:
        st = json.loads((run / "status.json").read_text())
        q = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env).stdout.strip()
        if st["phase"] == "failed" and not q:
            break
        time.sleep(0.2)
    assert st["phase"] == "failed" and st["fault"] == "cancelled" and not q
    # A cancel that did not reach the driver would leave the job running the rest of its
    # benchmark (400 requests of 512 tokens) or to its time limit. 45 s holds a busy machine's
    # teardown.
    assert time.time() - t < 45
    assert st["fault_at"] - t < 20  # the driver stopped on the cancel, not on a later fault

    follow = cli("logs", job_id, "--role", "decode", "-f", cwd=tmp_path, env=env)
    assert follow.returncode == 0 and "decode-0.n0:" in follow.stdout

    missing = cli("status", "999999", cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "no results dir" in missing.stderr
