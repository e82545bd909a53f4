"""Launch overhead: inferx-slurm versus a minimal hand-written sbatch script.

Both bring up the same three processes (Dynamo frontend, one mock prefill and one mock
decode engine, file discovery) on the local Slurm cluster, wait until the model is served
with both workers registered, run the same aiperf command, and stop. Both ask Slurm for the
same allocation (2 whole nodes, 4 GPUs each) and poll for readiness every 50 ms. Measured side
by side, alternating, in one run, each submission on idle nodes: seconds from submit to ready,
from submit to the job's end, and from the job's start to ready (Slurm's own scheduling left out).

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


def wait_released(job: str, timeout: float = 120) -> None:
    """Until Slurm has let go of the job and its nodes are idle again: the next submission of
    either kind then starts from the same empty cluster (not timed)."""
    end = time.time() + timeout
    while time.time() < end:
        busy = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout.split()
        if squeue_state(job) == "GONE" and busy and all(s == "idle" for s in busy):
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job} or its nodes still busy after {timeout} s")


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
    done = time.time() - t0
    wait_released(h.job_id)
    return h, ready - t0, done


def sbatch_and_wait(script: Path, poll_s: float = 0.05) -> tuple[float, float]:
    """Submit a hand-written batch script and wait for its end: (submit time, seconds to done)."""
    t0 = time.time()
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    while squeue_state(job) not in ("GONE", "COMPLETING"):
        time.sleep(poll_s)
    done = time.time() - t0
    wait_released(job)
    return t0, done


def run_launcher(r: Recipe, root: Path) -> tuple[float, float, float]:
    """(submit -> ready, submit -> done, job start -> ready)."""
    h, ready, done = launch_and_wait(r, root)
    summary = h.results()
    assert summary["rows"] and summary["rows"][0]["completed"] == 20, summary
    st = json.loads((h.results_dir / "status.json").read_text())
    at = {e["event"]: e["at"] for e in st["events"]}
    return ready, done, at["ready"] - at["allocation"]


HAND = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --partition=local
#SBATCH --time=10
#SBATCH --output={out}/slurm-%j.out
date +%s.%N > {out}/start
set -u
export DYN_DISCOVERY_BACKEND=file DYN_FILE_KV={out}/kv HF_HUB_OFFLINE=1 HF_HUB_CACHE={hf_cache}
mkdir -p {out}/kv
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
srun --overlap -N1 -n1 -w "${{nodes[0]}}" {py} -m dynamo.frontend --http-port {port} > {out}/frontend.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[0]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p1} {py} -m dynamo.mocker --model-path {model} --model-name {name} --disaggregation-mode prefill {margs} > {out}/prefill.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[1]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p2} {py} -m dynamo.mocker --model-path {model} --model-name {name} --disaggregation-mode decode {margs} > {out}/decode.log 2>&1 &
until curl -sf localhost:{port}/v1/models | grep -q '"{name}"' && [ "$(curl -sf localhost:{port}/health | grep -o '"endpoint":"generate"' | wc -l)" -ge 2 ]; do sleep 0.05; done
date +%s.%N > {out}/ready
{client}
kill $(jobs -p); wait
"""


def run_hand(r: Recipe, root: Path) -> tuple[float, float, float]:
    """(submit -> ready, submit -> done, job start -> ready)."""
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
    ready_at = float((out / "ready").read_text())
    export = json.loads((out / "bench" / "profile_export_aiperf.json").read_text())
    assert export["request_count"]["avg"] == 20
    return ready_at - t0, done, ready_at - float((out / "start").read_text())


def main() -> None:
    if "SLURM_CONF" not in os.environ:
        sys.exit("export SLURM_CONF (see `inferx-slurm local-cluster up`) first")
    r = recipe()
    root = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    res: dict[str, list[tuple[float, float, float]]] = {"inferx-slurm": [], "hand-written sbatch": []}
    for i in range(RUNS):
        res["inferx-slurm"].append(run_launcher(r, root))
        res["hand-written sbatch"].append(run_hand(r, root))
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in res.items()}
    for k, (ready, done, own) in med.items():
        print(f"{k:>20}: medians submit->ready {ready:5.2f} s, submit->done {done:6.2f} s, job start->ready {own:5.2f} s  ({RUNS} runs: "
              + ", ".join(f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in res[k]) + ")")
    a, b = med["inferx-slurm"], med["hand-written sbatch"]
    print(f"inferx-slurm - hand-written: ready {a[0] - b[0]:+.2f} s ({a[0] / b[0]:.2f}x), done {a[1] - b[1]:+.2f} s ({a[1] / b[1]:.2f}x), "
          f"from the job's start to ready {a[2] - b[2]:+.2f} s")


if __name__ == "__main__":
    main()
