"""Launch overhead: inferx-slurm versus a minimal hand-written sbatch script.

Both bring up the same three processes (Dynamo frontend, one mock prefill and one mock
decode engine, file discovery) on the local Slurm cluster, wait until the model is served
with both workers registered, run the same aiperf command, and stop. Measured side by side,
alternating, in one run: seconds from submit to ready and from submit to the job's end.

Needs the local cluster: `inferx-slurm local-cluster up` (and SLURM_CONF exported).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inferx_slurm import submit
from inferx_slurm.benchmark.aiperf import aiperf_argv
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.runtime.ports import choose

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def recipe() -> Recipe:
    r = Recipe.load(REPO / "recipes/disagg/local/mocker-1p1d.yaml")
    return r.with_overrides({"benchmark.concurrency": [4], "benchmark.min_requests": 20, "name": "bench-launch"})


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or "GONE"


def launch_and_wait(r: Recipe, root: Path, poll_s: float = 0.05) -> tuple[Any, float, float]:
    """Submit through the launcher and wait for the job's end: (handle, seconds to ready, to done)."""
    t0 = time.time()
    h = submit(r, root / f"launcher-{time.time_ns()}")
    ready = None
    while True:
        p = h.results_dir / "status.json"
        if ready is None and p.exists():
            st = json.loads(p.read_text())
            ev = next((e for e in st["events"] if e["event"] == "ready"), None)
            if ev:
                ready = st["started"] + ev["t"]
        if squeue_state(h.job_id) in ("GONE", "COMPLETING"):
            break
        time.sleep(poll_s)
    return h, ready - t0, time.time() - t0


def sbatch_and_wait(script: Path, poll_s: float = 0.05) -> tuple[float, float]:
    """Submit a hand-written batch script and wait for its end: (submit time, seconds to done)."""
    t0 = time.time()
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    while squeue_state(job) not in ("GONE", "COMPLETING"):
        time.sleep(poll_s)
    return t0, time.time() - t0


def run_launcher(r: Recipe, root: Path) -> tuple[float, float]:
    h, ready, done = launch_and_wait(r, root)
    summary = h.results()
    assert summary["rows"] and summary["rows"][0]["completed"] == 20, summary
    return ready, done


HAND = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --gpus-per-node=1
#SBATCH --partition=local
#SBATCH --time=10
#SBATCH --output={out}/slurm-%j.out
set -u
export DYN_DISCOVERY_BACKEND=file DYN_FILE_KV={out}/kv HF_HUB_OFFLINE=1 HF_HUB_CACHE={hf_cache}
mkdir -p {out}/kv
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
srun --overlap -N1 -n1 -w "${{nodes[0]}}" {py} -m dynamo.frontend --http-port {port} > {out}/frontend.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[0]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p1} {py} -m dynamo.mocker --model-path {model} --model-name {name} --disaggregation-mode prefill {margs} > {out}/prefill.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[1]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p2} {py} -m dynamo.mocker --model-path {model} --model-name {name} --disaggregation-mode decode {margs} > {out}/decode.log 2>&1 &
until curl -sf localhost:{port}/v1/models | grep -q '"{name}"' && [ "$(curl -sf localhost:{port}/health | grep -o '"endpoint":"generate"' | wc -l)" -ge 2 ]; do sleep 0.5; done
date +%s.%N > {out}/ready
{client}
kill $(jobs -p); wait
"""


def run_hand(r: Recipe, root: Path) -> tuple[float, float]:
    out = root / f"hand-{time.time_ns()}"
    out.mkdir(parents=True)
    scen = r.benchmark.scenarios[0]
    port = choose(span=3)  # a free block on this machine, which is every node of the local cluster
    margs = " ".join(f"--{k} {v}" for k, v in r.engine.args.items())
    client = shlex.join(aiperf_argv(r, scen, 4, url=f"http://127.0.0.1:{port}", artifact_dir=str(out / "bench"),
                                    tokenizer=r.benchmark.tokenizer or r.model.path))
    script = HAND.format(out=out, hf_cache=r.env["HF_HUB_CACHE"], py=r.engine.python, port=port, p1=port + 1, p2=port + 2,
                         model=r.model.path, name=r.model.name, margs=margs, client=client + f" > {out}/client.log 2>&1")
    (out / "job.sh").write_text(script)
    t0, done = sbatch_and_wait(out / "job.sh")
    ready = float((out / "ready").read_text()) - t0
    export = json.loads((out / "bench" / "profile_export_aiperf.json").read_text())
    assert export["request_count"]["avg"] == 20
    return ready, done


def main() -> None:
    if "SLURM_CONF" not in os.environ:
        sys.exit("export SLURM_CONF (see `inferx-slurm local-cluster up`) first")
    r = recipe()
    root = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    res: dict[str, list[tuple[float, float]]] = {"inferx-slurm": [], "hand-written sbatch": []}
    for i in range(RUNS):
        res["inferx-slurm"].append(run_launcher(r, root))
        res["hand-written sbatch"].append(run_hand(r, root))
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in res.items()}
    for k, (ready, done) in med.items():
        print(f"{k:>20}: submit->ready median {ready:6.2f} s, submit->done median {done:6.2f} s  ({RUNS} runs: "
              + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in res[k]) + ")")
    a, b = med["inferx-slurm"], med["hand-written sbatch"]
    print(f"ratio inferx-slurm / hand-written: ready {a[0] / b[0]:.2f}x, done {a[1] / b[1]:.2f}x")


if __name__ == "__main__":
    main()
