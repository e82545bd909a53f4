"""Eval datasets made ready before a job is submitted: each task's data checked, and with
eval.stage_dir copied once onto the shared filesystem (locked, complete or not at all, as
model checkpoints are) so that the job reads a copy no other run is changing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferx_slurm.evals.runner import check_data
from inferx_slurm.recipe.evals import EvalRun
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.sharedfs.locks import say, wait_notice


def _active(recipe: Recipe) -> bool:
    return recipe.eval is not None and recipe.eval.run is not EvalRun.off


def check_eval_data(recipe: Recipe) -> None:
    """Every task's dataset is a local directory in its task's format; an error names the field."""
    if _active(recipe):
        check_data(recipe.eval)


def stage_eval_for(recipe: Recipe) -> Recipe:
    """With eval.stage_dir, each task's dataset staged there and the recipe pointed at the copy."""
    if not _active(recipe) or not recipe.eval.stage_dir:
        return recipe
    from inferx_slurm.sharedfs.staging import stage_model

    dest = Path(recipe.eval.stage_dir)
    sets: dict[str, Any] = {}
    tasks = [t.model_dump(mode="json", exclude_none=True) for t in recipe.eval.tasks]
    for t in tasks:
        staged = stage_model(Path(t["dataset"]).resolve(), dest, log=say, on_wait=wait_notice("another stager"))
        t["dataset"] = str(staged.path)
    sets["eval.tasks"] = tasks
    return recipe.with_overrides(sets)
