"""inferx-slurm: disaggregated LLM serving recipes -> validated plans -> Slurm jobs -> results."""

__version__ = "0.1.0"

from .errors import InferxError, RecipeError  # noqa: E402
from .launcher import JobHandle, RunError, attach, dry_run_text, submit  # noqa: E402
from .plan import Plan, plan_recipe, plan_topology  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .sweep_submit import submit_sweep  # noqa: E402
from .topology import Topology  # noqa: E402

__all__ = ["InferxError", "JobHandle", "RunError", "attach", "dry_run_text", "submit", "submit_sweep", "Plan", "Recipe", "RecipeError", "Topology", "plan_recipe", "plan_topology", "__version__"]
