"""One deployment, built once: what `launch` submits, what its dry run prints and what the
feasibility checks read.

`build_deployment` turns a recipe (the site already applied at load) and its job dir into
the served recipe (the model pointed at its staged copy), the placement plan, the memory plan,
the verdict on prefill's and decode's KV layouts, the rendered scripts and the Slurm parameters.
It writes nothing; it reads the checkpoint's
headers, once per model when given a footprint cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.errors import RecipeError
from inferx_slurm.job.launch import HOST, IMAGE, JOB_ID
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.render import render
from inferx_slurm.job.phases import StepKind
from inferx_slurm.job.rendered import RenderedJob
from inferx_slurm.job.srun import srun_argv
from inferx_slurm.job.sbatch import executor_params
from inferx_slurm.planning.feasibility import MemoryPlan, footprint, plan_memory
from inferx_slurm.planning.footprint import Footprint
from inferx_slurm.planning.kv_layout import layout_error
from inferx_slurm.planning.placement import Plan, plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import ContainerRuntime
from inferx_slurm.sharedfs.eval_data import serve_eval_staged

# Model path -> its footprint (None: no local checkpoint and no size in the recipe), shared by
# the deployments of one launch so each checkpoint's headers are read once.
Footprints = dict[str, Optional[Footprint]]


class StepLaunch(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: StepKind
    node: int  # plan node index: the step runs on the allocation's host of that index
    argv: list[str]  # with job/launch.py's placeholders for the host, the job id and the image


class LaunchPlan(BaseModel):
    """launch.json: how the driver starts every step, and which start first."""

    model_config = ConfigDict(frozen=True)

    first: list[StepKind]  # the step kinds started as soon as the hosts are known
    nodes: int  # the plan's node count: fewer hosts and nothing starts early
    env: dict[str, str]  # what every step gets on top of the driver's environment
    image: Optional[str]  # the recipe's image, for a job dir with no imported one (image.json)
    steps: list[StepLaunch]


def launch_plan(recipe: Recipe, plan: Plan, job: RenderedJob) -> LaunchPlan:
    kinds = {st.kind for st in job.steps}
    # Bring-up order: discovery servers, then the Dynamo install, then frontend and engines. The
    # node cache's copies need nothing else, and the engines wait for them, so they start first.
    S = StepKind
    first = [S.infra] if S.infra in kinds else [S.install] if S.install in kinds else [S.frontend, S.worker]
    if S.node_cache in kinds:
        first = [S.node_cache, *(k for k in first if k not in (S.frontend, S.worker))]
    if S.fabric in kinds:  # the fabric preflight runs before any engine loads weights
        first = [k for k in first if k != S.worker]
    pyxis = recipe.container.runtime is ContainerRuntime.pyxis and bool(recipe.container.image)
    steps = [StepLaunch(name=st.name, kind=st.kind, node=st.node,
                        argv=srun_argv(recipe, st, HOST, job.job_dir, IMAGE if pyxis else None, job_id=JOB_ID))
             for st in job.steps]
    return LaunchPlan(first=first, nodes=plan.total_nodes, env=job.env, image=recipe.container.image, steps=steps)


class Deployment(BaseModel):
    """Everything one Slurm job of a launch is, before anything is written or submitted."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: Recipe  # as loaded (site and overrides applied): what is checked and staged from
    recipe: Recipe  # as served: the model (and draft) at their staged copies, the Hub switched off
    engine: Recipe  # what the engines start from; a sweep's shared start serves more points than `recipe`
    job_dir: str
    plan: Plan
    memory: Optional[MemoryPlan]  # None when GPU memory or the model's size is unknown
    kv_layout: Optional[RecipeError]  # why prefill's and decode's KV caches would not match; None when they do
    job: RenderedJob
    sbatch: dict[str, Any]  # submitit's SlurmExecutor parameters
    launch: LaunchPlan
    staging: dict[str, str]  # source path -> staged path, for each model (and eval dataset) staging copies first

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.job_dir)


def build_deployment(recipe: Recipe, job_dir: str | Path, *, engine: Optional[Recipe] = None,
                     footprints: Optional[Footprints] = None) -> Deployment:
    """The deployment `recipe` makes in `job_dir`. `engine`: the recipe its engines start from
    when they serve more points than this one (a sweep's shared start). The memory plan is of
    the source checkpoint: staging has not copied it yet when launch checks it."""
    staging: dict[str, str] = {}
    served = serve_eval_staged(serve_staged(recipe, staging), staging)
    served_engine = serve_staged(engine, staging) if engine is not None else served
    plan = plan_recipe(served)
    cache = footprints if footprints is not None else {}
    if recipe.model.path not in cache:
        cache[recipe.model.path] = footprint(recipe)
    memory = plan_memory(recipe, cache[recipe.model.path], plan=plan)
    job = render(served_engine, str(job_dir), plan)
    return Deployment(source=recipe, recipe=served, engine=served_engine, job_dir=job.job_dir, plan=plan, memory=memory,
                      kv_layout=layout_error(served_engine, plan), job=job, sbatch=executor_params(served, plan), launch=launch_plan(served, plan, job), staging=staging)


def serve_staged(recipe: Recipe, staging: Optional[dict[str, str]] = None) -> Recipe:
    """The recipe as launch serves it: with model.stage_dir set, the model (and draft) at their
    staged copies and the Hub switched off. Where each copy goes is added to `staging`."""
    if not recipe.model.stage_dir:
        return recipe
    from inferx_slurm.sharedfs.staging import StageSourceError, serving_env, staged_name

    dest = Path(recipe.model.stage_dir).expanduser().absolute()
    staging = staging if staging is not None else {}

    def staged(src: str) -> str:
        try:
            name = staged_name(src)
        except StageSourceError:  # not reachable from here (a cluster path seen from a laptop): its last part
            name = Path(src).name
        staging[src] = str(dest / name)
        return staging[src]

    sets: dict[str, Any] = {"model.path": staged(recipe.model.path)}
    sets["env"] = {**serving_env(sets["model.path"]), **recipe.env}
    spec = recipe.speculative
    if spec and spec.draft_model:
        # The draft is read at engine start like the model: the same race, the same cure.
        sets["speculative.draft_model"] = staged(spec.draft_model)
    return recipe.with_overrides(sets)


def image_dir(recipe: Recipe, results_dir: Path) -> Path:
    """Where launch imports the recipe's image: container.image_dir, else images/ beside the results."""
    return Path(recipe.container.image_dir or results_dir.parent / "images")


def narrowed(dep: Deployment, concurrency: list[int], footprints: Footprints) -> Deployment:
    """The deployment serving only these of its concurrencies (engines sized for them)."""
    bench = dep.source.benchmark.model_copy(update={"concurrency": concurrency})
    return build_deployment(dep.source.model_copy(update={"benchmark": bench}), dep.job_dir, footprints=footprints)
