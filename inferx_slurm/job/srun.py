"""How a rendered step is started: the srun command that runs its script on its node, inside
the engine's container (pyxis) for the steps that need the engine's software."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional

from inferx_slurm.job import node_cache
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import StepKind
from inferx_slurm.job.rendered import Step
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import ContainerRuntime


def container_name(job_id: str, node: int) -> str:
    """One named container per node and job: pyxis creates it on the node's first step and
    every later step of the job on that node reuses it (unnamed ones are unpacked per step)."""
    return f"inferx-{job_id}-n{node}"


# Steps that run in the engine's container; discovery and the GPU sampler run on the host:
# the engine image has neither etcd nor NATS, and the sampler needs only a host Python.
CONTAINER_STEPS = (StepKind.install, StepKind.fabric, StepKind.frontend, StepKind.worker)


def container_mounts(recipe: Recipe, job_dir: str) -> list[str]:
    """What every container step sees at the same path as the host: the job dir (scripts, logs,
    results), the staged models, the setup scripts' dirs, and the recipe's own mounts."""
    paths = [job_dir]
    if recipe.model.stage_dir:
        paths.append(recipe.model.stage_dir)
    paths += node_cache.mounts(recipe)
    paths += [str(PurePosixPath(s).parent) for s in recipe.setup_scripts]
    mounts = [f"{p}:{p}" for p in dict.fromkeys(paths)]
    return mounts + [m for m in recipe.container.mounts if m not in mounts]


def pyxis_flags(recipe: Recipe, step: Step, job_dir: str, image: str, job_id: str) -> list[str]:
    c = recipe.container
    flags = [f"--container-image={image}", f"--container-name={container_name(job_id, step.node)}",
             "--container-mounts=" + ",".join(container_mounts(recipe, job_dir))]
    flags.append("--container-mount-home" if c.mount_home else "--no-container-mount-home")
    if c.workdir:
        flags.append(f"--container-workdir={c.workdir}")
    if c.writable is not None:
        flags.append("--container-writable" if c.writable else "--container-readonly")
    if c.env:
        flags.append("--container-env=" + ",".join(c.env))
    return flags


def srun_argv(recipe: Recipe, step: Step, host: str, job_dir: str, image: Optional[str] = None,
              job_id: str = "JOBID") -> list[str]:
    """The srun command that starts one step on its node."""
    # Every step overlaps: engines need all of a node's CPUs and memory, which a step sized
    # by --exact would confine them away from. Worker steps see the node's GPUs and the
    # worker script pins its own (CUDA_VISIBLE_DEVICES from the plan); infra and frontend
    # steps see none.
    gpus = recipe.gpus_per_node if step.gpus else 0
    argv = [
        "srun", "--overlap", "--mem=0", f"--gpus-per-node={gpus}", "--nodes=1", "--ntasks=1", f"--nodelist={host}",
        f"--job-name={step.name}", f"--output={JobPaths(job_dir).log(step.name)}", "--open-mode=append",
        "--kill-on-bad-exit=1",
    ]
    if recipe.container.runtime is ContainerRuntime.pyxis and image and step.kind in CONTAINER_STEPS:
        argv += pyxis_flags(recipe, step, job_dir, image, job_id)
    argv += list(recipe.slurm.srun_args)
    argv += ["bash", str(JobPaths(job_dir).file(step.script))]
    if step.kind == StepKind.worker:
        argv.append(str(step.node_rank))
    elif step.kind in (StepKind.node_cache, StepKind.fabric):
        argv.append(str(step.node))
    return argv
