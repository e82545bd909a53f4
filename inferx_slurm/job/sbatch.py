"""Slurm submission: the parameters of a deployment's job, the batch script they make, and the
one call that hands jobs to sbatch through submitit. The batch script is rendered here from the
parameters (tests check it equals the file submitit submits), so the sbatch script a dry run
prints is the one that would be submitted."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from inferx_slurm.errors import SubmitError
from inferx_slurm.planning.placement import Plan
from inferx_slurm.recipe.schema import Recipe

# The batch script runs submitit's job runner on the pickled call in the folder.
SUBMITIT_RUNNER = "-u -m submitit.core._submit"
# A single deployment's job goes through runtime/boot.py first, which starts its frontend and
# engines before the runner imports submitit and unpickles the call.
BOOT = "-u -m inferx_slurm.runtime.boot"
# Parameters that shape the script rather than becoming #SBATCH lines.
SCRIPT_PARAMETERS = frozenset({"additional_parameters", "signal_delay_s", "use_srun", "array_parallelism"})
# #SBATCH lines submitit writes even when the parameters leave them out.
SUBMITIT_DEFAULTS: dict[str, Any] = {"job_name": "submitit", "time": 5, "nodes": 1, "wckey": "submitit"}
SIGNAL_DELAY_DEFAULT_S = 90
ARRAY_PARALLELISM_DEFAULT = 256


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


def directive(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def batch_script(command: str, folder: str | Path, params: dict[str, Any], *, signal: str = "USR2",
                 array_size: Optional[int] = None) -> str:
    """The batch script for `params` (as `executor_params` makes them): #SBATCH lines sorted by
    name, logs under `folder`, then `command`. `array_size`: a job array of that many tasks.
    `signal` is the one submitit's jobs take as a warning (SUBMITIT_PREEMPT_SIGNAL, else USR2)."""
    if params.get("use_srun", True):
        raise ValueError("use_srun must be False: the batch script runs the driver itself, which starts its own steps")
    folder = Path(folder).expanduser().absolute()
    lines: dict[str, Any] = {**SUBMITIT_DEFAULTS}
    lines.update({k: v for k, v in params.items() if v is not None and k not in SCRIPT_PARAMETERS})
    lines["signal"] = f"{signal}@{params.get('signal_delay_s', SIGNAL_DELAY_DEFAULT_S)}"
    log = "%j_0_log"
    if array_size is not None:
        parallel = params.get("array_parallelism", ARRAY_PARALLELISM_DEFAULT)
        lines["array"] = f"0-{array_size - 1}%{min(array_size, parallel)}"
        log = "%A_%a_0_log"
    lines["output"] = f"{folder}/{log}.out"
    lines["error"] = f"{folder}/{log}.err"
    lines["open-mode"] = "append"
    lines.update(params.get("additional_parameters") or {})
    out = ["#!/bin/bash", "", "# Parameters", *(directive(k, lines[k]) for k in sorted(lines))]
    out += ["", "# command", "export SUBMITIT_EXECUTOR=slurm", command, ""]
    return "\n".join(out)


def boot_python(python: str, job_dir: Optional[str | Path]) -> str:
    """The interpreter command submitit is given: with `job_dir`, one that boots that
    deployment's first steps before handing over to submitit's runner."""
    return python if job_dir is None else f"{python} {BOOT} {shlex.quote(str(Path(job_dir).expanduser().absolute()))}"


def runner_command(python: str, folder: str | Path, job_dir: Optional[str | Path] = None) -> str:
    """What the batch script runs: submitit's job runner under the driver's interpreter."""
    return f"{boot_python(python, job_dir)} {SUBMITIT_RUNNER} {shlex.quote(str(Path(folder).expanduser().absolute()))}"


def sbatch_text(python: str, params: dict[str, Any], folder: str | Path, job_dir: Optional[str | Path] = None) -> str:
    """The batch script submitit writes for these parameters (one job), its runner under `python`."""
    from submitit import JobEnvironment

    return batch_script(runner_command(python, folder, job_dir), folder, params, signal=JobEnvironment.USR_SIG)


def sbatch_script(recipe: Recipe, plan: Plan, job_dir: str | Path) -> str:
    """The batch script submitit writes when it submits this deployment from `job_dir`."""
    from inferx_slurm.job.interpreter import node_python
    from inferx_slurm.job.paths import JobPaths

    return sbatch_text(node_python(recipe), executor_params(recipe, plan), JobPaths(Path(job_dir)).submitit, job_dir)


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
                    env: dict[str, str], boot: Optional[Path] = None) -> list[Any]:
    """Submit `fn(arg)` for each call: one job, or one job array when there are several; returns
    submitit's jobs. `boot`: the job dir of a single deployment, whose first steps the batch
    script starts before submitit's runner. A refusal by sbatch is a SubmitError with sbatch's own words."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, python=boot_python(python, boot))
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
