"""Submitting a sweep in one of its modes, into one results root, resuming where asked.

array: one Slurm job array per allocation shape. jobs: one job per deployment. packed: one
job per allocation shape, running its deployments one after another (runtime/packed.py).
Every sweep point is built into its deployment once, and everything is checked (feasibility,
the packed time plan) before anything is written or submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from inferx_slurm.errors import RecipeError, raise_problems
from inferx_slurm.fsutil import atomic_write_json
from inferx_slurm.job.deployment import Deployment, Footprints, build_deployment, narrowed
from inferx_slurm.job.handle import JobHandle
from inferx_slurm.job.interpreter import node_python
from inferx_slurm.job.paths import SweepPaths, unused_dir
from inferx_slurm.job.sbatch import submit_to_slurm
from inferx_slurm.job.submit import check_deployment, import_image_for, prepare, record_job, require_sbatch, stage, submit_deployments
from inferx_slurm.planning.feasibility import require_fit
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sweep_spec import SweepMode
from inferx_slurm.reporting import Reporter, given
from inferx_slurm.sweeps.expand import SweepPoint, expand
from inferx_slurm.sweeps.packing import EngineStart, Pack, check_time, pack
from inferx_slurm.sweeps.state import done_points, read_manifest, remaining, write_manifest


def sweep_mode(recipe: Recipe, mode: Optional[str]) -> SweepMode:
    if mode is None:
        return recipe.sweep.mode if recipe.sweep else SweepMode.array
    try:
        return SweepMode(mode)
    except ValueError:
        raise RecipeError("--mode", mode, f"valid: {', '.join(m.value for m in SweepMode)}") from None


def fit_deployments(deployments: list[Deployment], *, dry_run: bool = False, force: bool = False, sweep: bool = False,
                    footprints: Optional[Footprints] = None, reporter: Optional[Reporter] = None) -> list[Deployment]:
    """No KV room anywhere: exit 2. Points beyond KV capacity: a warning for a dry run or with
    --force; otherwise refused for one deployment, skipped (and listed) in a sweep."""
    kept = [d for d in _fit(deployments, dry_run, force, sweep, footprints, given(reporter)) if d is not None]
    if not kept:
        raise _nothing_fits()
    return kept


def _nothing_fits() -> RecipeError:
    return RecipeError("sweep", "", "every point is beyond KV capacity; lower the concurrency, widen the workers, "
                       "or pass --force to run them anyway")


def _fit(deployments: list[Deployment], dry_run: bool, force: bool, sweep: bool, footprints: Optional[Footprints],
         out: Reporter) -> list[Optional[Deployment]]:
    """Each deployment as fitted (narrowed to the concurrencies it holds), or None when none fit."""
    raise_problems([e for d in deployments if d.memory for e in d.memory.errors], field="topology",
                   value=str(deployments[0].recipe.topology))
    fitted: list[Optional[Deployment]] = []
    for d in deployments:
        mp = d.memory
        if mp is None or not mp.over_capacity or dry_run or force:
            for w in mp.warnings if mp else []:
                out.warning(f"warning: {d.name}: {w}")
            fitted.append(d)
            continue
        if not sweep:
            require_fit(d.source, mp=mp)
        bad = {c for _, c in mp.over_capacity}
        for w in mp.warnings:
            out.warning(f"skipping: {d.name}: {w}")
        left = [c for c in d.source.benchmark.concurrency if c not in bad]
        fitted.append(narrowed(d, left, footprints if footprints is not None else {}) if left else None)
    return fitted


@dataclass
class PackedJob:
    """One packed allocation: its deployments in run order, each with its engine start."""

    pack: Pack
    entries: list[tuple[int, Deployment]]

    @property
    def shape(self) -> Deployment:
        """The deployment that sizes the allocation (the most nodes)."""
        return max((d for _, d in self.entries), key=lambda d: d.plan.total_nodes)


@dataclass
class SweepPlan:
    """What a sweep runs: its points (the manifest), and the deployments still to run, as
    single jobs and arrays or packed into allocations."""

    points: list[SweepPoint]
    deployments: list[Deployment] = field(default_factory=list)
    packs: list[PackedJob] = field(default_factory=list)


def plan_sweep(recipe: Recipe, mode: SweepMode, job_dir: Callable[[str], Path], done: frozenset = frozenset(), *,
               dry_run: bool = False, force: bool = False, reporter: Optional[Reporter] = None) -> SweepPlan:
    """Every sweep point built into its deployment (in `job_dir(name)`), fitted, narrowed to the
    points not done, and packed in packed mode; refuses what cannot run.

    Packs are formed from the whole sweep, so a resumed deployment starts its engines exactly
    as the first run did, then narrowed to the points not done.
    """
    cache: Footprints = {}
    expanded = expand(recipe)
    built = [build_deployment(p.recipe, job_dir(p.name), footprints=cache) for p in expanded]
    fits = _fit(built, dry_run, force, True, cache, given(reporter))
    if not any(fits):
        raise _nothing_fits()
    fitted = {_key(p): d for p, d in zip(expanded, fits) if d is not None}
    points = [_point(p, fitted[_key(p)]) for p in expanded if _key(p) in fitted]
    if mode is not SweepMode.packed:
        todo = []
        for p in points:
            left = remaining(p, set(done))
            if left is None:
                continue
            d = fitted[_key(p)]
            # A resumed deployment serves its points left on engines started as the first run's.
            todo.append(d if left is p else build_deployment(left.recipe, d.job_dir, engine=p.recipe, footprints=cache))
        return SweepPlan(points=points, deployments=todo)
    packs = []
    for pk in pack(recipe, points, nodes={p.name: fitted[_key(p)].plan.total_nodes for p in points}):
        starts = []
        for s in pk.starts:
            left = [r for r in (remaining(d, set(done)) for d in s.sweep_points) if r is not None]
            if left:
                starts.append(EngineStart(sweep_points=left, engine=s.engine))
        if starts:
            packs.append(pk.model_copy(update={"starts": starts}))
    check_time(recipe, packs)
    jobs = []
    for pk in packs:
        entries = []
        for k, s in enumerate(pk.starts):
            for p in s.sweep_points:
                d = fitted[_key(p)]
                # A shared start takes its first point's ports and serves the union of its points.
                same = p.recipe == d.source and s.engine == p.recipe
                entries.append((k, d if same else build_deployment(p.recipe, d.job_dir, engine=s.engine, footprints=cache)))
        jobs.append(PackedJob(pack=pk, entries=entries))
    return SweepPlan(points=points, packs=jobs)


def _key(p: SweepPoint) -> tuple[str, str]:
    # Unique in a sweep: a point's name says its topology and scenario (a recipe without a
    # sweep: section names every point after itself, one per scenario).
    return p.name, p.scenario


def _point(p: SweepPoint, d: Deployment) -> SweepPoint:
    """The sweep point as fitted: narrowed to the concurrencies its deployment kept."""
    concs = d.source.benchmark.concurrency
    return p if concs == p.concurrency else p.model_copy(update={"concurrency": concs, "recipe": d.source})


def submit_sweep(
    recipe: Recipe, root: Optional[Path] = None, *, mode: Optional[str] = None, resume: Optional[Path] = None,
    env: Optional[dict[str, str]] = None, force: bool = False, reporter: Optional[Reporter] = None,
) -> tuple[Path, list[JobHandle]]:
    """Submit the sweep's deployments not yet done; returns the results root and one handle per
    deployment submitted (none when every point is done)."""
    env = env or {}
    m = sweep_mode(recipe, mode)
    done: frozenset = frozenset()
    if resume is not None:
        man = read_manifest(resume)
        if man["name"] != recipe.name:
            raise RecipeError("--resume", str(resume), f"holds sweep {man['name']!r}, not {recipe.name!r}: pass that sweep's results root")
        done = frozenset(done_points(resume))
        root = Path(resume).resolve()
    else:
        root = unused_dir((root or Path("results") / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}").resolve())
    taken: set[Path] = set()

    def job_dir(name: str) -> Path:
        taken.add(d := unused_dir(root / name, taken))
        return d

    plan = plan_sweep(recipe, m, job_dir, done, force=force, reporter=reporter)
    for dep in plan.deployments + [d for j in plan.packs for _, d in j.entries]:
        check_deployment(dep, force=True)  # points beyond KV capacity were skipped above
    require_sbatch(env)
    write_manifest(root, recipe, plan.points, m.value)
    if m is not SweepMode.packed:
        handles = submit_deployments(plan.deployments, env=env, array_name=recipe.name, arrays=m is SweepMode.array,
                                     reporter=reporter)
        return root, handles
    return root, [h for j in plan.packs for h in _submit_pack(recipe, j, root, env, reporter)]


def _submit_pack(recipe: Recipe, job: PackedJob, root: Path, env: dict[str, str],
                 reporter: Optional[Reporter]) -> list[JobHandle]:
    from inferx_slurm.runtime.packed import run_pack

    for _, dep in job.entries:
        stage(dep, reporter)
        prepare(dep)
        import_image_for(dep.recipe, dep.paths.root, reporter)
    sweep = SweepPaths(root)
    manifest = sweep.pack_manifest(job.pack.index)
    atomic_write_json(manifest, {"stop_on_failure": bool(recipe.sweep and recipe.sweep.stop_on_failure),
                                 "deployments": [{"dir": d.job_dir, "start": k, "name": d.name} for k, d in job.entries]})
    shape = job.shape
    params = {**shape.sbatch, "job_name": recipe.slurm.job_name or recipe.name, "time": max(1, recipe.slurm.minutes)}
    folder = sweep.pack_submitit(manifest)
    (submitted,) = submit_to_slurm(folder, node_python(shape.recipe), params, [(run_pack, str(manifest))], env)
    handles = []
    for k, dep in job.entries:
        record_job(dep.paths, submitted.job_id, folder, pack=str(manifest), start=f"{manifest.stem}/{k}")
        handles.append(JobHandle(submitted.job_id, dep.paths.root, env=env, shared=True))
    return handles
