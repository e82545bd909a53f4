"""Eval datasets made ready before a job is submitted: each task's data checked, and with
eval.stage_dir copied once (with the models) onto the shared filesystem (locked, complete or not at all, as
model checkpoints are) so that the job reads a copy no other run is changing."""

from __future__ import annotations

from pathlib import Path

from inferx_slurm.evals.runner import check_data
from inferx_slurm.recipe.evals import EvalRun
from inferx_slurm.recipe.schema import Recipe


def _active(recipe: Recipe) -> bool:
    return recipe.eval is not None and recipe.eval.run is not EvalRun.off


def check_eval_data(recipe: Recipe) -> None:
    """Every task's dataset is a local directory in its task's format; an error names the field."""
    if _active(recipe):
        check_data(recipe.eval)


def serve_eval_staged(recipe: Recipe, staging: dict[str, str]) -> Recipe:
    """With eval.stage_dir, the recipe pointed at each task's staged dataset; where each copy
    goes is added to `staging` (launch copies it with the models, job/submit.py's `stage`)."""
    if not _active(recipe) or not recipe.eval.stage_dir:
        return recipe
    from inferx_slurm.sharedfs.staging import StageSourceError, staged_name

    dest = Path(recipe.eval.stage_dir).expanduser().absolute()
    tasks = [t.model_dump(mode="json", exclude_none=True) for t in recipe.eval.tasks]
    for t in tasks:
        src = str(Path(t["dataset"]).resolve())
        try:
            name = staged_name(src)
        except StageSourceError:  # not reachable from here: check_eval_data says so before submit
            name = Path(src).name
        staging[src] = t["dataset"] = str(dest / name)
    return recipe.with_overrides({"eval.tasks": tasks})
