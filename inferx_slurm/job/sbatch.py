"""Slurm submission parameters for a deployment, and the batch script they make.

Jobs are submitted through submitit's SlurmExecutor, which writes the batch script from these
parameters; a dry run renders the same text here (tests compare the two), so the sbatch script
a dry run prints is the one that would be submitted.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.planning.placement import Plan
from inferx_slurm.recipe.schema import Recipe

# The batch script runs submitit's job runner on the pickled call in the folder.
SUBMITIT_RUNNER = "-u -m submitit.core._submit"
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


def runner_command(python: str, folder: str | Path) -> str:
    """What the batch script runs: submitit's job runner under the driver's interpreter."""
    return f"{python} {SUBMITIT_RUNNER} {shlex.quote(str(Path(folder).expanduser().absolute()))}"


def sbatch_script(recipe: Recipe, plan: Plan, folder: str | Path) -> str:
    """The batch script submitit writes when it submits this deployment with `folder` as its folder."""
    from submitit import JobEnvironment

    from inferx_slurm.job.interpreter import node_python

    return batch_script(runner_command(node_python(recipe), folder), folder, executor_params(recipe, plan),
                        signal=JobEnvironment.USR_SIG)
