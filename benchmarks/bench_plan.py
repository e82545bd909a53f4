"""How long the pure core takes: plan + render an 18-node recipe, and a 500-point sweep.

Prints times measured in this run; nothing here touches Slurm.
"""

from __future__ import annotations

import statistics
import time

from inferx_slurm.job.sbatch import sbatch_script
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import render
from inferx_slurm.sweeps.expand import expand

BASE = {
    "name": "bench", "profile": "gb200-nvl72", "model": {"path": "org/Model"},
    "engine": {"backend": "vllm", "args": {"block-size": 128}},
    "benchmark": {"scenarios": ["8k1k"], "concurrency": [1, 4, 16, 64]},
}


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def one_recipe(recipe: Recipe) -> None:
    plan = plan_recipe(recipe)
    render(recipe, "/shared/results/bench", plan)
    sbatch_script(recipe, plan, "/shared/results/bench")


def main() -> None:
    r18 = Recipe.from_dict({**BASE, "topology": "2P4D TEP4->DEP16"})
    plan = plan_recipe(r18)
    assert plan.total_nodes == 18, plan.total_nodes
    t = timed(lambda: one_recipe(Recipe.from_dict({**BASE, "topology": "2P4D TEP4->DEP16"})), 50)
    print(f"18-node recipe (2P4D TEP4->DEP16, {plan.total_gpus} GPUs, {len(plan.workers)} workers): "
          f"load+plan+render+sbatch median {statistics.median(t) * 1e3:.2f} ms, max {max(t) * 1e3:.2f} ms (50 runs)")

    topologies = ["1P1D TP4->TEP8", "1P1D DEP8->DEP16", "2P1D DEP8->DEP16", "4P1D DEP8->DEP16", "2P4D TEP4->DEP16"]
    scenarios = ["1k1k", "8k1k", "1k8k", "4k1k"]
    concurrency = [1 << i for i in range(13)] + [3 * (1 << i) for i in range(12)]  # 25 values
    sweep = {**BASE, "topology": topologies[0], "sweep": {"topologies": topologies, "scenarios": scenarios, "concurrency": concurrency}}
    points = len(topologies) * len(scenarios) * len(concurrency)
    assert points == 500

    def whole_sweep(per_point: bool) -> int:
        doc = dict(sweep)
        if per_point:
            # An override per concurrency makes every point its own deployment: the worst case.
            doc["sweep"] = {**sweep["sweep"], "overrides": [{"match": {"concurrency": c}, "set": {"engine.decode.args.max-num-seqs": c}} for c in concurrency]}
        deps = expand(Recipe.from_dict(doc))
        for d in deps:
            one_recipe(d.recipe)
        return len(deps)

    for per_point in (False, True):
        n = whole_sweep(per_point)
        t = timed(lambda: whole_sweep(per_point), 3)
        label = "one deployment per point" if per_point else "grouped by topology x scenario"
        print(f"500-point sweep, {label}: {n} deployments planned+rendered in median {statistics.median(t):.3f} s "
              f"({statistics.median(t) / n * 1e3:.2f} ms per deployment)")


if __name__ == "__main__":
    main()
