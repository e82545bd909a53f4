"""inferx-slurm: disaggregated LLM serving recipes -> validated plans -> Slurm jobs -> results."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inferx_slurm.version import __version__

# The public API, imported on first use: the driver inside an allocation imports this package
# too, and should not pay for the submit side (staging, sweeps, submitit) at every job start.
_API = {
    "InferxError": "inferx_slurm.errors",
    "RecipeError": "inferx_slurm.errors",
    "JobHandle": "inferx_slurm.job.handle",
    "RunError": "inferx_slurm.job.handle",
    "attach": "inferx_slurm.job.handle",
    "dry_run_text": "inferx_slurm.job.dry_run",
    "submit": "inferx_slurm.job.submit",
    "Plan": "inferx_slurm.planning.placement",
    "plan_recipe": "inferx_slurm.planning.placement",
    "plan_topology": "inferx_slurm.planning.placement",
    "Recipe": "inferx_slurm.recipe.schema",
    "Topology": "inferx_slurm.recipe.topology",
    "submit_sweep": "inferx_slurm.sweeps.submit",
}

__all__ = ["InferxError", "JobHandle", "RunError", "attach", "dry_run_text", "submit", "submit_sweep", "Plan", "Recipe",
           "RecipeError", "Topology", "plan_recipe", "plan_topology", "__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'inferx_slurm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from inferx_slurm.errors import InferxError, RecipeError
    from inferx_slurm.job.dry_run import dry_run_text
    from inferx_slurm.job.handle import JobHandle, RunError, attach
    from inferx_slurm.job.submit import submit
    from inferx_slurm.planning.placement import Plan, plan_recipe, plan_topology
    from inferx_slurm.recipe.schema import Recipe
    from inferx_slurm.recipe.topology import Topology
    from inferx_slurm.sweeps.submit import submit_sweep
