"""Slurm submission parameters for a deployment, shared by dry runs and real submits so the
sbatch script a dry run prints is the one that would be submitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferx_slurm.planning.placement import Plan
from inferx_slurm.recipe.schema import Recipe


def executor_params(recipe: Recipe, plan: Plan) -> dict[str, Any]:
    s = recipe.slurm
    extra: dict[str, Any] = {
        # A dead node must not kill the batch script: the driver needs to live to diagnose
        # which worker died, keep the logs and cancel cleanly.
        "no_kill": True,
    }
    if s.segment:
        extra["segment"] = s.segment
    extra.update({k.lstrip("-").replace("-", "_"): v for k, v in s.sbatch_args.items()})
    params: dict[str, Any] = {
        "job_name": s.job_name or recipe.name,
        "nodes": plan.total_nodes,
        "ntasks_per_node": 1,
        "time": max(1, s.minutes),
        "use_srun": False,
        # submitit's warning signal goes to every step, engines included; the driver stops on
        # its own clock (slurm.stop_before_limit_s) well before, so send it as late as possible.
        "signal_delay_s": 5,
        "additional_parameters": extra,
    }
    if plan.gpus_per_node and recipe.engine.backend is not None:
        params["gpus_per_node"] = plan.gpus_per_node
    if s.partition:
        params["partition"] = s.partition
    if s.account:
        params["account"] = s.account
    if s.qos:
        params["qos"] = s.qos
    if s.exclusive:
        params["exclusive"] = True
    return params


def sbatch_script(recipe: Recipe, plan: Plan, folder: str | Path) -> str:
    """The sbatch script submitit writes for these parameters."""
    from submitit.slurm import slurm as _slurm

    from inferx_slurm.job.interpreter import node_python

    command = f"{node_python(recipe)} -u -m submitit.core._submit {folder}"
    return _slurm._make_sbatch_string(command=command, folder=str(folder), **executor_params(recipe, plan))
