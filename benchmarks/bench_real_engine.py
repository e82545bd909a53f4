"""The real engine through the launcher versus the same workers started by a hand-written sbatch.

Both run the real-engine recipe's deployment on the local Slurm cluster: etcd and NATS, the
Dynamo frontend, one vLLM prefill and one vLLM decode worker (the CPU build, NIXL over UCX/TCP)
with the same flags and environment, wait until both workers are registered, run the same
aiperf command, and stop. Side by side, alternating, in one run: seconds from submit to ready
and to the job's end, the output tokens the client counted and the decode worker's own count
of KV transfers (its log), for each.

Needs the local cluster (`inferx-slurm local-cluster up`, SLURM_CONF exported) and the engine
(`setup_scripts/install_engines.sh`). Each run loads two engines: minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from inferx_slurm.benchmark.aiperf import aiperf_argv
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.runtime.ports import choose

# Run as a script from benchmarks/: the launcher's and a batch script's submit-and-wait.
from bench_launch import launch_and_wait, sbatch_and_wait

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "1"))
TRANSFERS = re.compile(r"KV Transfer metrics: Num successful transfers=(\d+),.*Num failed transfers=(\d+)")


def recipe() -> Recipe:
    return Recipe.load(REPO / "recipes/disagg/local/vllm-1p1d.yaml").with_overrides({"name": "bench-real-engine"})


def transfers(log: Path) -> tuple[int, int]:
    ok = failed = 0
    for m in TRANSFERS.finditer(log.read_text(errors="replace") if log.exists() else ""):
        ok, failed = ok + int(m.group(1)), failed + int(m.group(2))
    return ok, failed


def output_tokens(export: Path) -> int:
    # Tokens the client received over the measured requests (the warm-up is not counted).
    return int(json.loads(export.read_text())["output_token_count"]["sum"])


def run_launcher(r: Recipe, root: Path) -> dict[str, float]:
    h, ready, done = launch_and_wait(r, root, poll_s=0.2)
    summary = h.results()
    row = summary["rows"][0]
    assert row["completed"] == r.benchmark.min_requests, summary
    export = next((h.paths.root / JobPaths.BENCH).rglob("profile_export_aiperf.json"))
    ok, failed = transfers(h.paths.log("decode-0.n0"))
    return {"ready": ready, "done": done, "tokens": output_tokens(export), "transfers": ok, "failed": failed}


HAND = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --gpus-per-node=1
#SBATCH --partition=local
#SBATCH --time=20
#SBATCH --output={out}/slurm-%j.out
set -u
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
export ETCD_ENDPOINTS=http://127.0.0.1:{etcd} NATS_SERVER=nats://127.0.0.1:{nats} ETCD_LEASE_TTL=60
export HF_HUB_OFFLINE=1 HF_HUB_CACHE={hf_cache} DYN_SDK_DISABLE_ANSI_LOGGING=1
export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 UCX_TLS=tcp
export VLLM_NIXL_SIDE_CHANNEL_HOST=127.0.0.1 VLLM_NO_USAGE_STATS=1
srun --overlap -N1 -n1 -w "${{nodes[0]}}" etcd --data-dir {out}/etcd --listen-client-urls http://0.0.0.0:{etcd} \\
  --advertise-client-urls http://127.0.0.1:{etcd} --listen-peer-urls http://127.0.0.1:{etcd_peer} \\
  --initial-advertise-peer-urls http://127.0.0.1:{etcd_peer} --initial-cluster default=http://127.0.0.1:{etcd_peer} > {out}/etcd.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[0]}}" nats-server -js -p {nats} --store_dir {out}/nats > {out}/nats.log 2>&1 &
until curl -sf localhost:{etcd}/health >/dev/null && (exec 3<>/dev/tcp/127.0.0.1/{nats}) 2>/dev/null; do sleep 0.2; done
srun --overlap -N1 -n1 -w "${{nodes[0]}}" {py} -m dynamo.frontend --http-port {port} --router-mode round-robin > {out}/frontend.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[0]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p1} VLLM_NIXL_SIDE_CHANNEL_PORT={s1} \\
  {py} -m dynamo.vllm {args} --disaggregation-mode prefill > {out}/prefill.log 2>&1 &
srun --overlap -N1 -n1 -w "${{nodes[1]}}" --gres=gpu:1 env DYN_SYSTEM_PORT={p2} VLLM_NIXL_SIDE_CHANNEL_PORT={s2} \\
  {py} -m dynamo.vllm {args} --disaggregation-mode decode > {out}/decode.log 2>&1 &
until curl -sf localhost:{port}/v1/models | grep -q '"{name}"' && [ "$(curl -sf localhost:{port}/health | grep -o '"endpoint":"generate"' | wc -l)" -ge 2 ]; do sleep 0.5; done
date +%s.%N > {out}/ready
{client}
kill $(jobs -p); wait
"""


def run_hand(r: Recipe, root: Path) -> dict[str, float]:
    out = root / f"hand-{time.time_ns()}"
    out.mkdir(parents=True)
    scen = r.benchmark.scenarios[0]
    port = choose(span=8)  # a free block on this machine, which is every node of the local cluster
    a = r.engine.args
    args = shlex.join([
        "--model", r.model.path, "--served-model-name", r.model.name, "--tensor-parallel-size", "1",
        "--block-size", "128", "--max-model-len", "640", "--kv-transfer-config", json.dumps(a["kv-transfer-config"]),
        "--dtype", str(a["dtype"]), "--enforce-eager", "--max-num-seqs", str(a["max-num-seqs"]),
    ])
    client = shlex.join(aiperf_argv(r, scen, r.benchmark.concurrency[0], url=f"http://127.0.0.1:{port}",
                                    artifact_dir=str(out / "bench"), tokenizer=r.benchmark.tokenizer or r.model.path))
    script = HAND.format(out=out, hf_cache=r.env["HF_HUB_CACHE"], py=r.engine.python, port=port, etcd=port + 1,
                         etcd_peer=port + 2, nats=port + 3, p1=port + 4, p2=port + 5, s1=port + 6, s2=port + 7,
                         args=args, name=r.model.name, client=client + f" > {out}/client.log 2>&1")
    (out / "job.sh").write_text(script)
    t0, done = sbatch_and_wait(out / "job.sh", poll_s=0.2)
    ready = float((out / "ready").read_text()) - t0
    export = out / "bench" / "profile_export_aiperf.json"
    assert json.loads(export.read_text())["request_count"]["avg"] == r.benchmark.min_requests
    ok, failed = transfers(out / "decode.log")
    return {"ready": ready, "done": done, "tokens": output_tokens(export), "transfers": ok, "failed": failed}


def main() -> None:
    if "SLURM_CONF" not in os.environ:
        sys.exit("export SLURM_CONF (see `inferx-slurm local-cluster up`) first")
    r = recipe()
    root = Path(tempfile.mkdtemp(prefix="bench-real-engine-"))
    res: dict[str, list[dict[str, float]]] = {"inferx-slurm": [], "hand-written sbatch": []}
    for _ in range(RUNS):
        res["inferx-slurm"].append(run_launcher(r, root))
        res["hand-written sbatch"].append(run_hand(r, root))
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in res.items()}
    for k, m in med.items():
        print(f"{k:>20}: submit->ready {m['ready']:6.1f} s, submit->done {m['done']:6.1f} s, output tokens "
              f"{m['tokens']:.0f}, decode KV transfers {m['transfers']:.0f} (failed {m['failed']:.0f})  ({RUNS} runs)")
    a, b = med["inferx-slurm"], med["hand-written sbatch"]
    print(f"ratio inferx-slurm / hand-written: ready {a['ready'] / b['ready']:.2f}x, done {a['done'] / b['done']:.2f}x")


if __name__ == "__main__":
    main()
