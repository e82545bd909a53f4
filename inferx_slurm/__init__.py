"""inferx-slurm: disaggregated LLM serving recipes -> validated plans -> Slurm jobs -> results."""

from inferx_slurm.errors import InferxError, RecipeError
from inferx_slurm.job.submit import JobHandle, RunError, attach, dry_run_text, submit
from inferx_slurm.planning.placement import Plan, plan_recipe, plan_topology
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.sweeps.submit import submit_sweep
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.version import __version__

__all__ = ["InferxError", "JobHandle", "RunError", "attach", "dry_run_text", "submit", "submit_sweep", "Plan", "Recipe", "RecipeError", "Topology", "plan_recipe", "plan_topology", "__version__"]
