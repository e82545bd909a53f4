"""`inferx-slurm plan SPEC`: where every worker would run, without touching Slurm."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inferx_slurm.errors import RecipeError, raise_problems
from inferx_slurm.job.deployment import serve_staged
from inferx_slurm.job.node_cache import where_lines
from inferx_slurm.planning.feasibility import format_memory
from inferx_slurm.planning.placement import format_plan, plan_recipe, plan_topology
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.site import settings_json, settings_lines
from inferx_slurm.sweeps.expand import expand
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.commands.argtypes import add_site_arg


def load_spec(spec: str, gpus_per_node: int | None, site: str | None = None) -> tuple[Recipe | None, Topology]:
    """SPEC is a recipe file or a topology string."""
    looks_like_file = spec.endswith((".yaml", ".yml", ".json")) or "/" in spec
    if looks_like_file or Path(spec).is_file():
        recipe = Recipe.load(spec, site=site)
        if gpus_per_node:
            recipe = recipe.with_overrides({"slurm.gpus_per_node": gpus_per_node})
        return recipe, recipe.topology
    return None, Topology.parse(spec, field="SPEC")


def run(args: argparse.Namespace) -> int:
    if args.gpus_per_node is not None and args.gpus_per_node < 1:
        raise RecipeError("--gpus-per-node", args.gpus_per_node, "expected a whole number >= 1")
    recipe, topo = load_spec(args.spec, args.gpus_per_node, args.site)
    if recipe is None:
        plans = [(str(topo), plan_topology(topo, args.gpus_per_node or 4), None)]
    else:
        from inferx_slurm.planning.feasibility import footprint, plan_memory

        points = expand(recipe)
        fp = footprint(points[0].recipe)  # one model for every point: read its headers once
        plans = [(p.name, plan, plan_memory(p.recipe, fp, plan=plan)) for p in points for plan in [plan_recipe(p.recipe)]]
    if args.json:
        settings = {"settings": settings_json(recipe)} if recipe is not None else {}
        docs = [{**p.model_dump(mode="json"), **({"memory": m.model_dump(mode="json")} if m else {}), **settings}
                for _, p, m in plans]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        blocks = []
        for name, p, m in plans:
            blocks.append(format_plan(p, title=name) + (f"\n\n{format_memory(m)}" if m else ""))
        if recipe is not None:
            blocks.append("\n".join(["settings (recipe > site > default):", *(f"  {line}" for line in settings_lines(recipe))]))
            weights = where_lines(recipe, serve_staged(recipe), plans[0][1])
            if weights:
                blocks.append("\n".join(weights))
        print("\n\n".join(blocks))
        for _, _, m in plans:
            for w in m.warnings if m else []:
                print(f"warning: {w}", file=sys.stderr)
    raise_problems([e for _, _, m in plans if m for e in m.errors], field="topology",
                   value=str(plans[0][1].topology) if len(plans) == 1 else args.spec)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="show the placement plan for a recipe or topology",
        description="Show nodes, GPUs and leaders for a recipe file or a topology string like '2P1D DEP8->DEP16'.",
    )
    p.add_argument("spec", metavar="SPEC", help="recipe file (.yaml/.json) or topology string")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default: recipe/profile, or 4)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_site_arg(p)
    p.set_defaults(func=run)
