"""Sweep expansion: topology x scenario x concurrency, with overrides, into sweep points.

A sweep point becomes one deployment (one Slurm job, job/deployment.py): it serves one
topology and one scenario and runs its concurrency list; max_model_len and graph sizes depend
on both. An override that matches a concurrency splits that concurrency into its own sweep
point, since it changes the engines.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import Scenario
from inferx_slurm.recipe.topology import Topology


class SweepPoint(BaseModel):
    """One deployment's worth of a sweep: its name, where in the sweep it is, and its recipe."""

    model_config = ConfigDict(frozen=True)

    name: str
    topology: str
    scenario: str
    concurrency: list[int]
    overrides: dict[str, Any]
    recipe: Recipe


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.replace("->", "-to-")).strip("-").lower()


def _matches(match: dict[str, Any], topo: Topology, scen: Scenario, conc: int) -> bool:
    for key, want in match.items():
        wants = want if isinstance(want, list) else [want]
        if key == "topology" and str(topo) not in {str(Topology.parse(str(w))) for w in wants}:
            return False
        if key == "scenario" and scen not in [Scenario.model_validate(w) for w in wants]:
            return False
        if key == "concurrency" and conc not in wants:
            return False
    return True


def expand(recipe: Recipe) -> list[SweepPoint]:
    sw = recipe.sweep
    topologies = (sw.topologies if sw and sw.topologies else None) or [recipe.topology]
    scenarios = (sw.scenarios if sw and sw.scenarios else None) or recipe.benchmark.scenarios
    concs = (sw.concurrency if sw and sw.concurrency else None) or recipe.benchmark.concurrency
    overrides = sw.overrides if sw else []
    single = not sw
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for topo in topologies:
        for scen in scenarios:
            for conc in sorted(set(concs)):
                sets: dict[str, Any] = {}
                for i, ov in enumerate(overrides):
                    try:
                        hit = _matches(ov.match, topo, scen, conc)
                    except (RecipeError, ValueError) as e:
                        raise RecipeError(f"sweep.overrides.{i}.match", ov.match, str(e)) from None
                    if hit:
                        sets.update(ov.set)
                key = (str(topo), scen.name, repr(sorted(sets.items())))
                g = groups.setdefault(key, {"topo": topo, "scen": scen, "sets": sets, "concs": []})
                g["concs"].append(conc)
    out = []
    for i, ((topo_s, scen_s, _), g) in enumerate(groups.items()):
        base = recipe.model_copy(
            update={
                "topology": g["topo"],
                "benchmark": recipe.benchmark.model_copy(update={"scenarios": [g["scen"]], "concurrency": g["concs"]}),
                "sweep": None,
            }
        )
        name = recipe.name if single else f"{recipe.name}-{_slug(topo_s)}-{scen_s}"
        if g["sets"]:
            try:
                base = base.with_overrides(g["sets"])
            except RecipeError as e:
                raise RecipeError(f"sweep.overrides ({topo_s}, {scen_s})", g["sets"], str(e)) from None
            if not single and len([k for k in groups if k[:2] == (topo_s, scen_s)]) > 1:
                name += f"-c{g['concs'][0]}"
        if not single:
            # Points of one sweep may share nodes (small clusters, arrays); distinct ports keep
            # their frontends and workers apart. Auto ports (None) are apart already: each is
            # chosen free on its node at start.
            fe, pl = base.frontend, base.placement
            steps = {"http_port": i, "etcd_port": 2 * i, "nats_port": i}
            base = base.model_copy(update={
                "frontend": fe.model_copy(update={k: getattr(fe, k) + d for k, d in steps.items() if getattr(fe, k) is not None}),
                "placement": pl.model_copy(update={"port_base": None if pl.port_base is None else pl.port_base + 200 * (i % 100)}),
            })
        base = base.model_copy(update={"name": name})
        out.append(
            SweepPoint(name=name, topology=topo_s, scenario=scen_s, concurrency=g["concs"], overrides=g["sets"], recipe=base)
        )
    return out
