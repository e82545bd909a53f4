"""Slurm submission: the parameters of a deployment's job, the sbatch script they make, and the
one call that hands jobs to sbatch through submitit. Dry runs and real submits share them, so
the sbatch script a dry run prints is the one that would be submitted."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from inferx_slurm.errors import SubmitError
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


def sbatch_text(python: str, params: dict[str, Any], folder: str | Path) -> str:
    """The sbatch script submitit writes for these parameters, run by `python`."""
    from submitit.slurm import slurm as _slurm

    command = f"{python} -u -m submitit.core._submit {folder}"
    return _slurm._make_sbatch_string(command=command, folder=str(folder), **params)


def sbatch_script(recipe: Recipe, plan: Plan, folder: str | Path) -> str:
    """The sbatch script of a recipe's job, as submitit writes it."""
    from inferx_slurm.job.interpreter import node_python

    return sbatch_text(node_python(recipe), executor_params(recipe, plan), folder)


@contextlib.contextmanager
def slurm_environ(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with `env` over it, for the duration: sbatch reads SLURM_CONF
    and friends from the environment of the submitting process."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def submit_to_slurm(folder: Path, python: str, params: dict[str, Any], calls: Sequence[tuple[Callable[..., Any], str]],
                    env: dict[str, str]) -> list[Any]:
    """Submit `fn(arg)` for each call: one job, or one job array when there are several; returns
    submitit's jobs. A refusal by sbatch is a SubmitError with sbatch's own words."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, python=python)
    executor.update_parameters(**params)
    with slurm_environ(env):
        try:
            if len(calls) == 1:
                return [executor.submit(calls[0][0], calls[0][1])]
            with executor.batch():
                jobs = [executor.submit(fn, arg) for fn, arg in calls]
            return jobs
        except subprocess.CalledProcessError as e:
            raise SubmitError(f"sbatch refused the job: {(e.stderr or b'').decode(errors='replace').strip() or e}") from None
        except Exception as e:  # submitit wraps sbatch failures in several types
            raise SubmitError(f"sbatch refused the job: {e}") from None
