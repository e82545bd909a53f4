"""Sweep modes side by side: one job per deployment, job arrays, packed, and packed with one
common max_model_len, on the same ladder, on the local Slurm cluster.

The ladder is a small local version of a GB200 disaggregated ladder: topologies x 2 scenarios
x concurrencies, on Dynamo's mock engines. A model load is SIMULATED: every engine first
sources `simulated_load.sh`, a sleep of BENCH_LOAD_S seconds (the mock engine's own
`--startup-time` does not delay its registration, so it cannot stand in for a load). A
competing job holds one of the three nodes for the whole run, so the sweep's jobs queue
behind each other. For each mode, one after another in one run:

  wall time      submit of the first job to the end of the last (launch --wait)
  GPU-hours      sum over the sweep's Slurm jobs of elapsed x GPUs allocated (sacct)
  engine starts  bring-ups of the deployment: frontend starts counted in the logs
  queue wait     sum over the sweep's jobs of start - submit (sacct)

and checks that every mode produced the same results rows (same points, all completed).

Needs the local cluster: `inferx-slurm local-cluster up` (and SLURM_CONF exported).
Knobs: BENCH_LOAD_S (simulated load, default 20), BENCH_TOPOLOGIES (1-3, default 2).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LOAD_S = float(os.environ.get("BENCH_LOAD_S", "20"))
TOPOLOGIES = ["1P1D TP1", "2P1D TP1", "1P1D TP2"][: int(os.environ.get("BENCH_TOPOLOGIES", "2"))]
MODES = [("jobs", "jobs", False), ("array", "array", False), ("packed", "packed", False), ("packed+len", "packed", True)]


def ladder(mode: str, share_len: bool) -> dict:
    doc = yaml.safe_load((REPO / "recipes/disagg/local/mocker-sweep.yaml").read_text())
    doc["name"] = "bench-sweep"
    doc["engine"]["args"].update({"speedup-ratio": 20})
    doc["setup_scripts"] = [str(REPO / "benchmarks" / "simulated_load.sh")]
    doc["env"]["INFERX_SIMULATED_LOAD_S"] = str(int(LOAD_S))
    doc["benchmark"].update({"concurrency": [1, 4], "min_requests": 8, "requests_per_concurrency": 2})
    doc["sweep"] = {
        "mode": mode, "share_max_model_len": share_len,
        "topologies": TOPOLOGIES,
        "scenarios": [{"isl": 128, "osl": 32}, {"isl": 256, "osl": 16}],
        # The smallest rung fits on one node: in a packed allocation it uses a subset of its nodes.
        "overrides": [{"match": {"topology": "1P1D TP1"}, "set": {"placement.share_nodes": True}}],
        "estimate": {"load_s": LOAD_S + 10, "point_s": 30},
    }
    return doc


def sacct(job_ids: set[str]) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(sorted(job_ids)), "-o",
                          "JobID,ElapsedRaw,AllocTRES,Submit,Start,State"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        jid, elapsed, tres, submit, start, state = line.split("|")
        gpus = re.search(r"gres/gpu=(\d+)", tres)
        rows.append({"id": jid, "elapsed": int(elapsed or 0), "gpus": int(gpus.group(1)) if gpus else 0,
                     "submit": submit, "start": start, "state": state})
    return rows


def _ts(s: str) -> float:
    return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S"))


def run_mode(label: str, mode: str, share_len: bool, work: Path) -> dict:
    recipe = work / f"{label}.yaml"
    recipe.write_text(yaml.safe_dump(ladder(mode, share_len)))
    root = work / label
    competitor = subprocess.run(["sbatch", "--parsable", "-J", "competitor", "-N1", "--gres=gpu:4", "-p", "local", "-t", "60",
                                 "-o", "/dev/null", "--wrap", "sleep 3600"], capture_output=True, text=True, check=True).stdout.strip()
    while subprocess.run(["squeue", "-h", "-j", competitor, "-o", "%T"], capture_output=True, text=True).stdout.strip() != "RUNNING":
        time.sleep(0.2)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(recipe), "--wait", "--results-dir", str(root)],
                         capture_output=True, text=True, cwd=work)
    wall = time.time() - t0
    subprocess.run(["scancel", competitor], check=True)
    if out.returncode != 0:
        sys.exit(f"{label}: launch failed\n{out.stdout}\n{out.stderr}")
    from inferx_slurm.sweeps.state import rows

    job_ids = {json.loads(p.read_text())["job_id"].split("_")[0] for p in root.glob("*/job.json")}
    time.sleep(2)  # let slurmdbd record the last job's end
    jobs = sacct(job_ids)
    return {
        "label": label,
        "wall_s": wall,
        "gpu_h": sum(j["elapsed"] * j["gpus"] for j in jobs) / 3600,
        "jobs": len(jobs),
        "queue_s": sum(max(0.0, _ts(j["start"]) - _ts(j["submit"])) for j in jobs),
        "starts": sum(f.read_text().count("[inferx] frontend host=") for f in root.glob("*/logs/frontend.log")),
        "rows": rows(root),
    }


def main() -> None:
    if not os.environ.get("SLURM_CONF"):
        sys.exit("export SLURM_CONF from `inferx-slurm local-cluster up` first")
    n_points = len(TOPOLOGIES) * 2 * 2
    print(f"ladder: {len(TOPOLOGIES)} topologies x 2 scenarios x 2 concurrencies = {n_points} points; "
          f"SIMULATED model load: a {LOAD_S:.0f} s sleep before each engine; "
          "a competing job holds 1 of 3 nodes", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for label, mode, share in MODES:
            r = run_mode(label, mode, share, Path(tmp))
            print(f"  {label}: {r['wall_s']:.0f} s", flush=True)
            results.append(r)

    def key(row: dict) -> tuple:
        return (row["topology"], row["isl"], row["osl"], row["concurrency"], row["completed"], row["failed"])

    ref = sorted(key(r) for r in results[0]["rows"])
    for r in results:
        got = sorted(key(x) for x in r["rows"])
        assert got == ref and len(got) == n_points and all(x[5] == 0 for x in got), (r["label"], got, ref)

    base = results[0]
    head = f"{'mode':<12}{'wall s':>9}{'vs jobs':>9}{'GPU-h':>9}{'vs jobs':>9}{'starts':>8}{'jobs':>6}{'queue s':>9}"
    print("\n" + head)
    for r in results:
        print(f"{r['label']:<12}{r['wall_s']:>9.0f}{r['wall_s'] / base['wall_s']:>8.2f}x{r['gpu_h']:>9.3f}"
              f"{r['gpu_h'] / base['gpu_h']:>8.2f}x{r['starts']:>8d}{r['jobs']:>6d}{r['queue_s']:>9.0f}")
    print(f"\nresults rows identical across modes: {n_points} points, all completed")


if __name__ == "__main__":
    main()
