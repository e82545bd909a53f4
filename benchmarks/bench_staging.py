"""Staging throughput against `cp -r` of the same tree, and the cost of re-staging.

    python benchmarks/bench_staging.py [--dir DIR] [--big-files 16] [--big-mib 64] [--workers 8]

Both copies read the same warm source and write to the same filesystem (``--dir``, default
the system temp dir; point it at Lustre to measure there).  ``stage_model`` also fsyncs every
file before publishing it, which ``cp -r`` does not, so ``cp -r`` + ``sync`` is shown too.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inferx_slurm.sharedfs.staging import stage_model  # noqa: E402

MiB = 1 << 20


def make_tree(root: Path, big_files: int, big_mib: int, small_files: int, seed: int = 0) -> int:
    """A checkpoint-shaped tree: a few large shards and many small files.  Returns bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    total = 0
    block = rng.randbytes(MiB)
    for i in range(big_files):
        with open(root / f"model-{i + 1:05d}-of-{big_files:05d}.safetensors", "wb") as f:
            for j in range(big_mib):
                # Vary each MiB so no filesystem can dedupe or compress it away.
                f.write(block[j % 7 :] + block[: j % 7])
        total += big_mib * MiB
    for i in range(small_files):
        sub = root / f"extra{i % 10}"
        sub.mkdir(exist_ok=True)
        data = rng.randbytes(rng.randint(100, 20_000))
        (sub / f"file-{i:05d}.json").write_bytes(data)
        total += len(data)
    return total


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to build and copy trees (default: system temp dir)")
    ap.add_argument("--big-files", type=int, default=16)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--small-files", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--restage-files", type=int, default=1000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-staging-", dir=args.dir))
    try:
        src = work / "src" / "model"
        nbytes = make_tree(src, args.big_files, args.big_mib, args.small_files)
        nfiles = args.big_files + args.small_files
        print(f"tree: {args.big_files} x {args.big_mib} MiB + {args.small_files} small files "
              f"= {nfiles} files, {nbytes / MiB:.0f} MiB, in {work}")
        subprocess.run(["cat", *map(str, src.rglob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)

        cp, cp_sync, stage = [], [], []
        for i in range(args.repeat):
            # Interleaved, so drift in the machine's state hits every method alike.
            a, b, c = work / f"cp{i}", work / f"cps{i}", work / f"stage{i}"
            cp.append(timed(lambda a=a: subprocess.run(["cp", "-r", str(src), str(a)], check=True)))
            cp_sync.append(timed(lambda b=b: (subprocess.run(["cp", "-r", str(src), str(b)], check=True),
                                              subprocess.run(["sync", "-f", str(b)], check=True))))
            stage.append(timed(lambda c=c: stage_model(src, c, workers=args.workers)))
            for d in (a, b, c):
                shutil.rmtree(d)

        def line(label: str, samples: list[float]) -> float:
            med = statistics.median(samples)
            print(f"  {label:<24} {med:7.3f} s  {nbytes / MiB / med:8.0f} MiB/s   (median of {len(samples)})")
            return med

        print("copy throughput:")
        t_cp = line("cp -r", cp)
        t_cps = line("cp -r + sync", cp_sync)
        t_stage = line(f"stage_model ({args.workers} workers)", stage)
        print(f"  ratio stage/cp -r throughput:        {t_cp / t_stage:.2f}x")
        print(f"  ratio stage/(cp -r + sync) throughput: {t_cps / t_stage:.2f}x")

        small = work / "src1000" / "model-1000"
        make_tree(small, 0, 0, args.restage_files, seed=1)
        dest = work / "staged"
        first = stage_model(small, dest, workers=args.workers)
        assert first.files_copied == args.restage_files
        runs = []
        for _ in range(20):
            start = time.perf_counter()
            res = stage_model(small, dest, workers=args.workers)
            runs.append(time.perf_counter() - start)
            assert res.reused
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        cli = [
            timed(lambda: subprocess.run(
                [sys.executable, "-m", "inferx_slurm", "model", "stage", str(small), "--dest", str(dest), "-q"],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for _ in range(5)
        ]
        print(f"re-stage of an already staged {args.restage_files:,}-file model:")
        print(f"  first stage              {first.seconds * 1000:7.1f} ms")
        print(f"  re-stage, in process    {statistics.median(runs) * 1000:7.1f} ms  (median of {len(runs)})")
        print(f"  re-stage, CLI end to end {statistics.median(cli) * 1000:7.1f} ms  "
              f"(median of {len(cli)}, interpreter start included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
