"""Packed sweeps: sweep points grouped into allocations and engine starts, and the time each
allocation needs. Pure: sweep points in, packs out.

A pack is one Slurm job: its sweep points' deployments run one after another on the first
nodes of an allocation sized by the largest of them. Within a pack, consecutive points whose
engines would be started identically share one engine start (one model load): they differ
only in benchmark settings, or, with `sweep.share_max_model_len`, also in scenario.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import Scenario
from inferx_slurm.sweeps.expand import SweepPoint


class EngineStart(BaseModel):
    """Sweep points served by one bring-up of the engines (one model load)."""

    model_config = ConfigDict(frozen=True)

    sweep_points: list[SweepPoint]
    engine: Recipe  # what the engines are started from: the union of the sweep points' benchmark points

    @property
    def points(self) -> int:
        return sum(points(d.recipe) for d in self.sweep_points)


class Pack(BaseModel):
    """One allocation running its engine starts one after another."""

    model_config = ConfigDict(frozen=True)

    index: int
    starts: list[EngineStart]
    nodes: int  # the largest sweep point's node count: the allocation's size
    shape_recipe: Recipe  # the sweep point that sizes the allocation

    @property
    def sweep_points(self) -> list[SweepPoint]:
        return [d for s in self.starts for d in s.sweep_points]


def points(recipe: Recipe) -> int:
    return len(recipe.benchmark.scenarios) * len(recipe.benchmark.concurrency)


def engine_key(recipe: Recipe, share_max_model_len: bool) -> str:
    """Everything that decides how the engines start. Equal keys: one start serves both.

    Benchmark settings never change the engines once the engine recipe takes the union of the
    concurrencies (graph sizes cover the largest). Scenarios decide max_model_len, so they
    stay in the key unless the recipe accepts one common length. Ports are not part of it:
    deployments sharing a start take its ports.
    """
    d: dict[str, Any] = recipe.to_dict()
    for k in ("name", "sweep"):
        d.pop(k, None)
    bench = d.pop("benchmark", {})
    if not share_max_model_len:
        d["scenarios"] = bench.get("scenarios")
    for k in ("http_port", "etcd_port", "nats_port"):
        d.get("frontend", {}).pop(k, None)
    d.get("placement", {}).pop("port_base", None)
    d.get("slurm", {}).pop("job_name", None)
    return json.dumps(d, sort_keys=True)


def _alloc_key(recipe: Recipe) -> str:
    # Deployments that can share an allocation: the same Slurm settings and GPUs per node;
    # node count and time limit are the pack's own.
    s = recipe.slurm.model_dump(mode="json", exclude={"time", "job_name"})
    return json.dumps({"slurm": s, "gpus_per_node": recipe.gpus_per_node, "gpus": recipe.engine.backend is not None}, sort_keys=True)


def _union(lists: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for items in lists:
        for x in items:
            if x not in out:
                out.append(x)
    return out


def _engine_recipe(deps: list[SweepPoint]) -> Recipe:
    first = deps[0].recipe
    scens: list[Scenario] = _union([d.recipe.benchmark.scenarios for d in deps])
    concs = sorted(set(c for d in deps for c in d.recipe.benchmark.concurrency))
    bench = first.benchmark.model_copy(update={"scenarios": scens, "concurrency": concs})
    return first.model_copy(update={"benchmark": bench})


def _take_ports(recipe: Recipe, owner: Recipe) -> Recipe:
    return recipe.model_copy(update={"frontend": recipe.frontend.model_copy(update={
        "http_port": owner.frontend.http_port, "etcd_port": owner.frontend.etcd_port, "nats_port": owner.frontend.nats_port}),
        "placement": recipe.placement.model_copy(update={"port_base": owner.placement.port_base})})


def pack(sweep_recipe: Recipe, sweep_points: list[SweepPoint], nodes: Optional[dict[str, int]] = None) -> list[Pack]:
    """Group a sweep's points into allocations and, within each, into engine starts. `nodes`:
    each point's node count by name, when its plan is already made."""
    share = bool(sweep_recipe.sweep and sweep_recipe.sweep.share_max_model_len)
    by_alloc: dict[str, list[SweepPoint]] = {}
    for d in sweep_points:
        by_alloc.setdefault(_alloc_key(d.recipe), []).append(d)
    packs = []
    for i, deps in enumerate(by_alloc.values()):
        by_engine: dict[str, list[SweepPoint]] = {}
        for d in deps:
            by_engine.setdefault(engine_key(d.recipe, share), []).append(d)
        starts = []
        for group in by_engine.values():
            owner = group[0].recipe
            group = [d.model_copy(update={"recipe": _take_ports(d.recipe, owner)}) for d in group]
            starts.append(EngineStart(sweep_points=group, engine=_engine_recipe(group)))
        sizes = [(nodes[d.name] if nodes else plan_recipe(d.recipe).total_nodes, d.recipe) for d in deps]
        nodes, shape = max(sizes, key=lambda x: x[0])
        packs.append(Pack(index=i, starts=starts, nodes=nodes, shape_recipe=shape))
    return packs


def pack_seconds(sweep_recipe: Recipe, p: Pack) -> float:
    est = sweep_recipe.sweep.estimate if sweep_recipe.sweep else None
    assert est is not None
    return len(p.starts) * est.load_s + sum(s.points for s in p.starts) * est.point_s + sweep_recipe.slurm.stop_before_limit_s


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def check_time(sweep_recipe: Recipe, packs: list[Pack]) -> None:
    """Refuse a pack whose estimated run does not fit the Slurm time limit, naming what to change."""
    est = sweep_recipe.sweep.estimate if sweep_recipe.sweep else None
    assert est is not None
    limit = sweep_recipe.slurm.minutes * 60
    for p in packs:
        need = pack_seconds(sweep_recipe, p)
        if need > limit:
            n_pts = sum(s.points for s in p.starts)
            raise RecipeError(
                "slurm.time", sweep_recipe.slurm.time,
                f"the packed allocation {p.index} needs about {hms(need)}: {len(p.starts)} engine starts x "
                f"sweep.estimate.load_s {est.load_s:.0f} s + {n_pts} points x sweep.estimate.point_s {est.point_s:.0f} s "
                f"+ slurm.stop_before_limit_s {sweep_recipe.slurm.stop_before_limit_s:.0f} s; raise slurm.time to at least "
                f"{hms(-(-need // 60) * 60)}, lower the estimates if they are pessimistic, or use sweep.mode: array",
            )
