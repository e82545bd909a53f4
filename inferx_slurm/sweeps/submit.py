"""Submitting a sweep in one of its modes, into one results root, resuming where asked.

array: one Slurm job array per allocation shape. jobs: one job per deployment. packed: one
job per allocation shape, running its deployments one after another (runtime/packed.py).
Everything is checked (feasibility, the packed time plan) before anything is written or
submitted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from inferx_slurm.errors import RecipeError, SubmitError
from inferx_slurm.job.sbatch import executor_params
from inferx_slurm.fsutil import atomic_write_json
from inferx_slurm.job.submit import JobHandle, fresh_results_dir, submit_environ, import_image_for, prepare, require_sbatch, stage_model_for, submit_many
from inferx_slurm.sweeps.packing import EngineStart, Pack, check_time, pack
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import SweepMode
from inferx_slurm.sweeps.expand import Deployment, expand
from inferx_slurm.sweeps.state import done_points, read_manifest, remaining, write_manifest


def sweep_mode(recipe: Recipe, mode: Optional[str]) -> SweepMode:
    if mode is None:
        return recipe.sweep.mode if recipe.sweep else SweepMode.array
    try:
        return SweepMode(mode)
    except ValueError:
        raise RecipeError("--mode", mode, f"valid: {', '.join(m.value for m in SweepMode)}") from None


def fit_deployments(deployments: list[Deployment], *, dry_run: bool = False, force: bool = False,
                    sweep: bool = False) -> list[Deployment]:
    """No KV room anywhere: exit 2. Points beyond KV capacity: a warning for a dry run or with
    --force; otherwise refused for one deployment, skipped (and listed) in a sweep."""
    from inferx_slurm.planning.feasibility import footprint, plan_memory, raise_errors, require_fit

    fp = footprint(deployments[0].recipe)  # one model for every deployment: read its headers once
    plans = [plan_memory(d.recipe, fp) for d in deployments]
    raise_errors([e for mp in plans if mp for e in mp.errors], str(deployments[0].recipe.topology))
    kept = []
    for d, mp in zip(deployments, plans):
        over = mp.over_capacity if mp else []
        if not over or dry_run or force:
            for w in mp.warnings if mp else []:
                print(f"warning: {d.name}: {w}", file=sys.stderr)
            kept.append(d)
            continue
        if not sweep:
            require_fit(d.recipe, mp=mp)
        bad = sorted({c for _, c in over})
        for w in mp.warnings:
            print(f"skipping: {d.name}: {w}", file=sys.stderr)
        left = [c for c in d.concurrency if c not in bad]
        if left:
            bench = d.recipe.benchmark.model_copy(update={"concurrency": left})
            kept.append(d.model_copy(update={"concurrency": left, "recipe": d.recipe.model_copy(update={"benchmark": bench})}))
    if not kept:
        raise RecipeError("sweep", "", "every point is beyond KV capacity; lower the concurrency, widen the workers, "
                          "or pass --force to run them anyway")
    return kept


def plan_sweep(recipe: Recipe, mode: SweepMode, done: frozenset = frozenset(), *, dry_run: bool = False,
               force: bool = False) -> tuple[list[Deployment], list[Pack]]:
    """The deployments still to run and, packed, their allocations; refuses what cannot run.

    Packs are formed from the whole sweep, so a resumed deployment starts its engines exactly
    as the first run did, then narrowed to the points not done.
    """
    deployments = fit_deployments(expand(recipe), dry_run=dry_run, force=force, sweep=True)
    if mode is not SweepMode.packed:
        return deployments, []
    packs = []
    for p in pack(recipe, deployments):
        starts = []
        for s in p.starts:
            left = [r for r in (remaining(d, set(done)) for d in s.deployments) if r is not None]
            if left:
                starts.append(EngineStart(deployments=left, engine=s.engine))
        if starts:
            packs.append(p.model_copy(update={"starts": starts}))
    check_time(recipe, packs)
    return deployments, packs


def submit_sweep(
    recipe: Recipe, root: Optional[Path] = None, *, mode: Optional[str] = None, resume: Optional[Path] = None,
    env: Optional[dict[str, str]] = None, force: bool = False,
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
    deployments, packs = plan_sweep(recipe, m, done, force=force)
    from inferx_slurm.job.interpreter import check_interpreter

    check_interpreter(recipe)
    require_sbatch(env)
    if resume is not None:
        root = Path(resume).resolve()
    elif root is None:
        root = fresh_results_dir(Path("results").resolve() / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}")
    else:
        root = fresh_results_dir(root.resolve())
    write_manifest(root, recipe, deployments, m.value)
    if m is not SweepMode.packed:
        todo = [(r, d) for d in deployments if (r := remaining(d, set(done))) is not None]
        handles = submit_many([(r.recipe, root / d.name) for r, d in todo], env=env, array_name=recipe.name,
                              arrays=m is SweepMode.array, engines=[d.recipe for _, d in todo],
                              force=True)  # points were fitted above
        return root, handles
    return root, [h for p in packs for h in _submit_pack(recipe, p, root, env)]


def _submit_pack(recipe: Recipe, p: Pack, root: Path, env: dict[str, str]) -> list[JobHandle]:
    import submitit

    from inferx_slurm.runtime.packed import run_pack

    entries = []
    for k, s in enumerate(p.starts):
        engine = stage_model_for(s.engine)
        for d in s.deployments:
            r = stage_model_for(d.recipe)
            rd, _, _ = prepare(r, root / d.name, engine)
            import_image_for(r, rd)
            entries.append({"dir": str(rd), "start": k, "name": d.name})
    manifest = _fresh_name(root / f"pack-{p.index}.json")
    atomic_write_json(manifest, {"stop_on_failure": bool(recipe.sweep and recipe.sweep.stop_on_failure), "deployments": entries})
    shape = stage_model_for(p.shape_recipe)
    params = {**executor_params(shape, plan_recipe(shape)), "job_name": recipe.slurm.job_name or recipe.name,
              "time": max(1, recipe.slurm.minutes)}
    folder = root / f"submitit-{manifest.stem}"
    from inferx_slurm.job.interpreter import node_python

    executor = submitit.SlurmExecutor(folder=folder, python=node_python(shape))
    executor.update_parameters(**params)
    with submit_environ(env):
        try:
            job = executor.submit(run_pack, str(manifest))
        except subprocess.CalledProcessError as e:
            raise SubmitError(f"sbatch refused the job: {(e.stderr or b'').decode(errors='replace').strip() or e}") from None
        except Exception as e:  # submitit wraps sbatch failures in several types
            raise SubmitError(f"sbatch refused the job: {e}") from None
    handles = []
    for ent in entries:
        rd = Path(ent["dir"])
        atomic_write_json(rd / "job.json", {"job_id": job.job_id, "submitted": time.time(), "argv": sys.argv,
                                            "submitit_folder": str(folder), "pack": str(manifest), "start": f"{manifest.stem}/{ent['start']}"})
        handles.append(JobHandle(job.job_id, rd, env=env, shared=True))
    return handles


def _fresh_name(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate
