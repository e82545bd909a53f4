"""`inferx-slurm launch RECIPE`: submit a deployment (or print it with --dry-run)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import RecipeError
from ..launcher import RunError, default_results_dir, dry_run_text, submit_many
from ..recipe import Recipe
from ..results import format_table, served_line
from ..sweep import Deployment, expand
from .remote import add_remote_args, remote_from_args


def run(args: argparse.Namespace) -> int:
    recipe = Recipe.load(args.recipe)
    deployments = expand(recipe)
    # Every deployment of a sweep is checked before anything is staged, submitted or uploaded.
    deployments = _memory_checked(deployments, dry_run=args.dry_run, force=args.force, sweep=recipe.sweep is not None)
    if args.remote:
        passthrough = [*(["--dry-run"] if args.dry_run else []), *(["--wait"] if args.wait else []),
                       *(["--force"] if args.force else []),
                       *(["--results-dir", args.results_dir] if args.results_dir else [])]
        return remote_from_args(args).launch(recipe, passthrough)
    root = Path(args.results_dir) if args.results_dir else None
    if args.dry_run:
        for d in deployments:
            target = (root if root and len(deployments) == 1 else (root or Path("results")) / d.name)
            sys.stdout.write(dry_run_text(d.recipe, Path(target).resolve()))
        return 0
    targets = [
        (d.recipe, root if root and len(deployments) == 1 else default_results_dir(d.recipe, root or "results"))
        for d in deployments
    ]
    handles = submit_many(targets, array_name=recipe.name, force=True)  # points were checked above
    for d, h in zip(deployments, handles):
        print(f"submitted {d.name}: job {h.job_id}, results in {h.results_dir}", flush=True)
    if not args.wait:
        return 0
    return _wait_all(handles)


def _memory_checked(deployments: list[Deployment], *, dry_run: bool, force: bool, sweep: bool) -> list[Deployment]:
    """No KV room anywhere: exit 2. Points beyond KV capacity: a warning for a dry run or with
    --force; otherwise refused for one deployment, skipped (and listed) in a sweep."""
    from ..feasibility import footprint, plan_memory, raise_errors, require_fit

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


def _wait_all(handles: list) -> int:
    def cancel(signum, _frame):
        for h in handles:
            h.cancel()
        print(f"\ncancelling {', '.join(h.job_id for h in handles)} ({signal.Signals(signum).name})", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    try:
        for h in handles:
            try:
                summary = h.wait(on_status=lambda st, h=h: print(f"job {h.job_id}: {st.get('phase')} ({st.get('slurm_state')})", flush=True))
                print(format_table(summary["rows"]))
                print(served_line(summary))
                print(f"results: {h.results_dir}/summary.json")
            except RunError as e:
                print(f"job {h.job_id} FAILED:\n{e}", file=sys.stderr, flush=True)
                print(f"logs kept in {h.results_dir}/logs", file=sys.stderr)
                rc = 1
    finally:
        for s, f in old.items():
            signal.signal(s, f)
    return rc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="submit a recipe (a sweep submits one job per deployment)",
        description="Validate, plan and submit a recipe; --dry-run prints the sbatch script, every step and every script instead.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe file (.yaml/.json)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted and run; submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the run, print the results table, exit non-zero on failure")
    p.add_argument("--force", action="store_true",
                   help="run benchmark points beyond a role's KV capacity (refused, or skipped in a sweep, without it)")
    p.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/NAME-TIMESTAMP)")
    add_remote_args(p)
    p.set_defaults(func=run)
