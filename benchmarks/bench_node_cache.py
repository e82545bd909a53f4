"""Node-cache fan-out against `cp -r`, the second job's copy, and shared staging against `cp -r`.

    python benchmarks/bench_node_cache.py [--dir DIR] [--shards 20] [--shard-mib 120] [--repeat 3]

Needs the local cluster (`inferx-slurm local-cluster up`, or $INFERX_LOCAL_CLUSTER_DIR naming a
running one). A checkpoint of ``--shards`` shards of real (non-sparse) bytes plus config and
tokenizer-sized files is written under ``--dir`` (default the system temp dir) and deleted after.

* Staging: `cp -r`, `cp -r` + `sync`, and ``stage_model`` of the same tree, interleaved. A stage
  flushes every file before publishing it (so a crash never leaves a stage whose files are not
  on disk); `cp -r` returns once the data is in the page cache. A third line stages with the
  flush switched off in this process only, to show what the flush costs (not a shipped mode).
* Fan-out: every node of the local cluster runs the node-cache step at once (one srun task per
  node, ``{node}`` giving each its own cache dir), as a job with model.node_cache does. The local
  cluster's nodes share one disk, so its fair baseline is one `cp -r` per node, all at once
  (+ `sync`: the node cache flushes too); a single `cp -r` is shown as well. Then the same step
  again: the second job on those nodes, which finds every copy complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inferx_slurm import localdev  # noqa: E402
from inferx_slurm.sharedfs.staging import stage_model  # noqa: E402

MiB = 1 << 20


def make_checkpoint(root: Path, shards: int, shard_mib: int, seed: int = 0) -> int:
    """Shards of real bytes (each MiB a rotation of one random block, so nothing is sparse or
    deduplicated) and the small files a checkpoint carries. Returns the bytes written."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    block = rng.randbytes(MiB)
    total = 0
    for i in range(shards):
        with open(root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            for j in range(shard_mib):
                k = (i * shard_mib + j) % (MiB - 1) + 1
                f.write(block[k:] + block[:k])
        total += shard_mib * MiB
    for name, size in (("config.json", 4_000), ("tokenizer.json", 9_000_000), ("tokenizer_config.json", 20_000),
                       ("generation_config.json", 200), ("model.safetensors.index.json", 300_000)):
        data = rng.randbytes(size)
        (root / name).write_bytes(data)
        total += size
    return total


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: list[str], **kw) -> None:
    subprocess.run(argv, check=True, **kw)


def stage_unflushed(src: Path, dest: Path, workers: int) -> None:
    """The same stage with every fsync a no-op: what the flush costs, measured, never shipped."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        stage_model(src, dest, workers=workers)
    finally:
        os.fsync = real


def fan_out(env: dict[str, str], staged: Path, cache: Path, out: Path, nodes: int, workers: int) -> tuple[float, float, list[dict]]:
    """One node-cache step per node, all at once. Returns (srun wall s, copy phase s, outcomes)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    step = (f"exec {sys.executable} -m inferx_slurm.runtime.node_cache_step --staged {staged} --dir {cache}/{{node}} "
            f"--cap 100% --mode required --workers {workers} --out {out} --node $SLURM_NODEID")
    wall = timed(lambda: run(["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--job-name=bench-node-cache",
                              "bash", "-c", step], env=env, stdout=subprocess.DEVNULL))
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("node*.json"))]
    if len(docs) != nodes or any(d["path"] is None for d in docs):
        raise SystemExit(f"fan-out failed: {docs}")
    return wall, max(d["ended"] for d in docs) - min(d["started"] for d in docs), docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write the checkpoint and its copies (default: system temp dir)")
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--shard-mib", type=int, default=120)
    ap.add_argument("--workers", type=int, default=8, help="files copied at once, by a stage and by each node")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--state-dir", default=None, help="the local cluster's state dir (default: $INFERX_LOCAL_CLUSTER_DIR)")
    args = ap.parse_args()

    info = localdev.status(Path(args.state_dir) if args.state_dir else None)
    if not info.up:
        raise SystemExit(f"the local cluster in {info.state_dir} is not up: inferx-slurm local-cluster up")
    env = {**os.environ, **info.env, "PYTHONPATH": str(REPO)}
    nodes = info.nodes

    work = Path(tempfile.mkdtemp(prefix="bench-node-cache-", dir=args.dir))
    try:
        src = work / "src" / "ckpt"
        nbytes = make_checkpoint(src, args.shards, args.shard_mib)
        gb = nbytes / 1e9
        print(f"checkpoint: {args.shards} shards x {args.shard_mib} MiB + 5 small files = {gb:.2f} GB, in {work}")

        samples: dict[str, list[float]] = {}

        def add(label: str, seconds: float) -> None:
            samples.setdefault(label, []).append(seconds)

        def warm(tree: Path) -> None:
            run(["cat", *map(str, sorted(p for p in tree.rglob("*") if p.is_file()))], stdout=subprocess.DEVNULL)

        def measure(label: str, fn, source: Path, made: list[Path]) -> None:
            # Each method starts alike: its source in the page cache, nothing dirty (so it pays for
            # no other's writeback); what it made is deleted at once, so its pages evict nothing.
            warm(source)
            run(["sync"])
            add(label, timed(fn))
            for x in made:
                shutil.rmtree(x)

        # -- shared staging against cp -r -------------------------------------------------------
        for i in range(args.repeat):
            a, b, c, d = (work / f"{k}{i}" for k in ("cp", "cps", "stage", "nofsync"))
            measure("cp -r", lambda: run(["cp", "-r", str(src), str(a)]), src, [a])
            measure("cp -r + sync", lambda: (run(["cp", "-r", str(src), str(b)]), run(["sync", "-f", str(b)])), src, [b])
            measure("stage_model", lambda: stage_model(src, c, workers=args.workers), src, [c])
            measure("stage_model, no flush", lambda: stage_unflushed(src, d, args.workers), src, [d])

        # -- fan-out to every node, then a second job ---------------------------------------------
        staged = stage_model(src, work / "stage", workers=args.workers).path
        shutil.rmtree(src)
        cache = work / "cache"
        for i in range(args.repeat):
            warm(staged)
            run(["sync"])
            wall, copy, docs = fan_out(env, staged, cache, work / "out", nodes, args.workers)
            add(f"fan-out, {nodes} nodes (copy phase)", copy)
            add(f"fan-out, {nodes} nodes (srun wall)", wall)
            wall2, copy2, docs2 = fan_out(env, staged, cache, work / "out", nodes, args.workers)
            assert all(d["reused"] and d["bytes_copied"] == 0 for d in docs2), docs2
            add("second job (copy phase)", copy2)
            add("second job (srun wall)", wall2)
            shutil.rmtree(cache)
            dirs = [work / f"par{i}-{n}" for n in range(nodes)]

            def copies(then_sync: bool) -> None:
                for p in [subprocess.Popen(["cp", "-r", str(staged), str(x)]) for x in dirs]:
                    p.wait()
                if then_sync:
                    run(["sync", "-f", str(work)])

            for then_sync in (False, True):
                measure(f"{nodes} x cp -r at once" + (" + sync" if then_sync else ""), lambda: copies(then_sync), staged, dirs)

        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"\nmedian of {args.repeat} (each method writes the {gb:.2f} GB checkpoint once per copy):")
        for label, t in med.items():
            rate = "" if label.startswith("second job") else f"{gb * (nodes if 'nodes' in label or ' x ' in label else 1) / t:5.2f} GB/s"
            print(f"  {label:<36} {t:8.3f} s  {rate:>9}   samples {' '.join(f'{x:.2f}' for x in samples[label])}")
        fan = med[f"fan-out, {nodes} nodes (copy phase)"]
        print("\nstaging (throughput ratios, higher is faster):")
        print(f"  stage_model / cp -r                  {med['cp -r'] / med['stage_model']:.2f}x")
        print(f"  stage_model / (cp -r + sync)         {med['cp -r + sync'] / med['stage_model']:.2f}x")
        print(f"  stage_model without its flush / cp -r {med['cp -r'] / med['stage_model, no flush']:.2f}x  (diagnostic only)")
        print(f"fan-out to {nodes} nodes on one shared disk ({nodes * gb:.2f} GB written):")
        print(f"  fan-out / ({nodes} x cp -r at once)          {med[f'{nodes} x cp -r at once'] / fan:.2f}x")
        print(f"  fan-out / ({nodes} x cp -r at once + sync)   {med[f'{nodes} x cp -r at once + sync'] / fan:.2f}x")
        print(f"  fan-out / one cp -r (a third of the bytes) {med['cp -r'] / fan:.2f}x")
        print(f"second job on the same nodes: copy phase {med['second job (copy phase)']:.3f} s "
              f"(srun wall {med['second job (srun wall)']:.2f} s, interpreter start included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
