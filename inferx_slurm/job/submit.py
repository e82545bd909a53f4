"""Submitting deployments: the thin shell around the pure core.

A launch builds its deployments (job/deployment.py), checks every one of them, then for each
stages its model, imports its image, writes its job dir and hands it to Slurm through
submitit; a `JobHandle` (job/handle.py) follows it from there.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from inferx_slurm.errors import SubmitError
from inferx_slurm.fsutil import atomic_write, atomic_write_json
from inferx_slurm.job.deployment import Deployment, Footprints, build_deployment, image_dir
from inferx_slurm.job.handle import JobHandle
from inferx_slurm.job.interpreter import check_interpreter, node_python
from inferx_slurm.job.paths import JobPaths, SweepPaths, unused_dir
from inferx_slurm.job.sbatch import submit_to_slurm
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import ContainerRuntime, Discovery, FrontendServer
from inferx_slurm.reporting import Reporter, given
from inferx_slurm.sharedfs.eval_data import check_eval_data
from inferx_slurm.results import provenance


def default_results_dir(recipe: Recipe, root: str | Path = "results") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root).resolve() / f"{recipe.name}-{stamp}"


def require_sbatch(env: dict[str, str]) -> None:
    if not shutil.which("sbatch", path={**os.environ, **env}.get("PATH")):
        raise SubmitError("sbatch not found: run on a Slurm login node, submit with --remote USER@LOGIN, "
                          "or start the local cluster (inferx-slurm local-cluster up)")


def check_deployment(dep: Deployment, *, force: bool = False) -> None:
    """Refuse, before anything is staged or submitted, prefill and decode KV layouts that differ,
    a role with no KV room, an eval dataset that is not there, unless forced a benchmark point beyond a role's KV capacity, and a
    driver interpreter the nodes cannot run."""
    from inferx_slurm.planning.feasibility import require_fit

    if dep.kv_layout is not None:
        raise dep.kv_layout
    require_fit(dep.source, force=force, mp=dep.memory)
    check_interpreter(dep.recipe)
    check_eval_data(dep.source)


def submit(recipe: Recipe, results_dir: Optional[Path] = None, *, env: Optional[dict[str, str]] = None,
           force: bool = False, reporter: Optional[Reporter] = None) -> JobHandle:
    """Build, check, prepare and submit one deployment. Returns at once with a handle.

    `force` submits benchmark points beyond a role's KV capacity (they queue or preempt).
    """
    job_dir = unused_dir((results_dir or default_results_dir(recipe)).resolve())
    dep = build_deployment(recipe, job_dir)
    check_deployment(dep, force=force)
    return submit_deployments([dep], env=env, reporter=reporter)[0]


def build_for_submit(recipes: list[tuple[Recipe, Path]], *, engines: Optional[list[Recipe]] = None,
                     footprints: Optional[Footprints] = None) -> list[Deployment]:
    """One deployment per (recipe, results dir), each in a results dir nothing else holds."""
    cache = footprints if footprints is not None else {}
    deps: list[Deployment] = []
    for i, (recipe, results_dir) in enumerate(recipes):
        job_dir = unused_dir(results_dir.resolve(), taken={Path(d.job_dir) for d in deps})
        deps.append(build_deployment(recipe, job_dir, engine=engines[i] if engines else None, footprints=cache))
    return deps


def submit_deployments(deployments: list[Deployment], *, env: Optional[dict[str, str]] = None,
                       array_name: Optional[str] = None, arrays: bool = True,
                       reporter: Optional[Reporter] = None) -> list[JobHandle]:
    """Stage, prepare and submit checked deployments; those that need the same allocation go
    as one Slurm job array (with `arrays=False`, each as its own job)."""
    from inferx_slurm.runtime.entry import run_job

    env = env or {}
    require_sbatch(env)
    for dep in deployments:
        stage(dep, reporter)
        prepare(dep)
        import_image_for(dep.recipe, dep.paths.root, reporter)
    groups: dict[str, list[Deployment]] = {}
    for i, dep in enumerate(deployments):
        shape = {k: v for k, v in dep.sbatch.items() if k != "job_name"}
        groups.setdefault(repr(sorted(shape.items())) if arrays else str(i), []).append(dep)

    handles = []
    for items in groups.values():
        first = items[0]
        params = first.sbatch
        if len(items) == 1:
            folder = first.paths.submitit
        else:
            params = {**params, "job_name": array_name or first.name}
            folder = SweepPaths.array_submitit(first.paths.root, params["job_name"])
        jobs = submit_to_slurm(folder, node_python(first.recipe), params, [(run_job, d.job_dir) for d in items], env,
                               boot=first.paths.root if len(items) == 1 else None)
        for job, dep in zip(jobs, items):
            record_job(dep.paths, job.job_id, folder)
            handles.append(JobHandle(job.job_id, dep.paths.root, env=env))
    return handles


def record_job(paths: JobPaths, job_id: str, folder: Path, **extra: str) -> None:
    atomic_write_json(paths.job, {"job_id": job_id, "submitted": time.time(), "argv": sys.argv,
                                  "submitit_folder": str(folder), **extra})


def prepare(dep: Deployment) -> Path:
    """Write the job dir: the rendered scripts, the recipe as it runs, its plan and steps."""
    paths = dep.paths
    for rel, text in dep.job.files.items():
        atomic_write(paths.file(rel), text, mode=0o755 if rel.endswith(".sh") else None)
    atomic_write(paths.recipe_yaml, dep.recipe.to_yaml())
    atomic_write_json(paths.recipe_json, dep.recipe.to_dict())
    atomic_write_json(paths.plan, dep.plan.model_dump(mode="json"))
    atomic_write_json(paths.rendered, dep.job.model_dump(mode="json"))
    atomic_write_json(paths.launch, dep.launch.model_dump(mode="json"))
    provenance.start(dep.recipe, paths.root)
    paths.logs.mkdir(exist_ok=True)
    if dep.recipe.frontend.server is FrontendServer.dynamo and dep.recipe.frontend.discovery is Discovery.file:
        paths.discovery.mkdir(exist_ok=True)  # the frontend and workers start before the driver is up
    return paths.root


# Images and models are made ready once, under a lock, before the allocation starts burning
# nodes: many nodes pulling one image or checkpoint at once is what corrupts shared filesystems.


def stage(dep: Deployment, reporter: Optional[Reporter] = None) -> None:
    """Copy each model the deployment serves (and each eval dataset) to where it serves it from
    (model.stage_dir, eval.stage_dir), once."""
    if not dep.staging:
        return
    from inferx_slurm.sharedfs.locks import wait_notice
    from inferx_slurm.sharedfs.staging import stage_model

    out = given(reporter)
    for src, dest in dep.staging.items():
        staged = Path(dest)
        stage_model(src, staged.parent, name=staged.name, log=out.info, on_wait=wait_notice("another stager", out.info))


def import_image_for(recipe: Recipe, results_dir: Path, reporter: Optional[Reporter] = None) -> None:
    if recipe.container.runtime is not ContainerRuntime.pyxis or not recipe.container.image:
        return
    from inferx_slurm.sharedfs.images import import_image
    from inferx_slurm.sharedfs.locks import wait_notice

    out = given(reporter)
    res = import_image(recipe.container.image, image_dir(recipe, results_dir), log=out.info,
                       on_wait=wait_notice("another import", out.info))
    atomic_write_json(JobPaths(results_dir).image, {"uri": recipe.container.image, "path": str(res.path)})
    provenance.record_image(recipe, results_dir, Path(res.path))
