"""How long the memory planner takes to read a checkpoint's layout: the safetensors headers of a
60-shard MiniMax-M3-like MXFP8 checkpoint (~443 GB described, sparse files), then the plan.

    PYTHONPATH=. python benchmarks/bench_memory.py

Prints times measured in this run, and the header-read time against the time to stat the same
shards (the floor for touching 60 files).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from checkpoints import minimax_m3_mxfp8  # noqa: E402

from inferx_slurm.planning.checkpoint import read_checkpoint  # noqa: E402
from inferx_slurm.planning.feasibility import memory_plan  # noqa: E402
from inferx_slurm.planning.footprint import footprint_from_tensors  # noqa: E402
from inferx_slurm.recipe.schema import Recipe  # noqa: E402


def timed(fn, repeat: int = 7) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = minimax_m3_mxfp8(Path(tmp) / "MiniMax-M3-MXFP8", shards=60)
        shards = sorted(root.glob("*.safetensors"))
        ck = read_checkpoint(root)
        header_bytes = sum(8 + int.from_bytes(open(p, "rb").read(8), "little") for p in shards)
        stat = timed(lambda: [p.stat() for p in shards])
        read = timed(lambda: read_checkpoint(root))
        classify = timed(lambda: footprint_from_tensors(ck.tensors, ck.config, "bench"))
        recipe = Recipe.from_dict({"name": "b", "profile": "h200", "model": {"path": str(root)}, "topology": "1P1D TEP8->DEP8",
                                   "benchmark": {"scenarios": ["1k1k"], "concurrency": [64, 256, 1024]}})
        whole = timed(lambda: memory_plan(recipe))
        med = statistics.median
        print(f"checkpoint: {len(shards)} shards, {len(ck.tensors)} tensors, "
              f"{sum(p.stat().st_size for p in shards) / 1e9:.1f} GB described, {header_bytes / 1e6:.1f} MB of headers")
        print(f"stat 60 shards:               {med(stat) * 1e3:8.2f} ms")
        print(f"read 60 headers + index:      {med(read) * 1e3:8.2f} ms  ({med(read) / med(stat):.0f}x stat)")
        print(f"classify tensors:             {med(classify) * 1e3:8.2f} ms")
        print(f"whole memory plan (2 roles):  {med(whole) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
