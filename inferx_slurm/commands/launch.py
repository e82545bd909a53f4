"""`inferx-slurm launch RECIPE`: submit a deployment (or print it with --dry-run)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..launcher import RunError, check_feasible, default_results_dir, dry_run_text, submit_many
from ..recipe import Recipe
from ..results import format_table, served_line
from ..sweep import expand
from .remote import add_remote_args, remote_from_args


def run(args: argparse.Namespace) -> int:
    recipe = Recipe.load(args.recipe)
    deployments = expand(recipe)
    if args.remote or args.dry_run:
        # Every deployment of a sweep, before anything leaves this machine; a real submit
        # gets the same check inside submit_many.
        for d in deployments:
            check_feasible(d.recipe)
    if args.remote:
        passthrough = [*(["--dry-run"] if args.dry_run else []), *(["--wait"] if args.wait else []),
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
    handles = submit_many(targets, array_name=recipe.name)
    for d, h in zip(deployments, handles):
        print(f"submitted {d.name}: job {h.job_id}, results in {h.results_dir}", flush=True)
    if not args.wait:
        return 0
    return _wait_all(handles)


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
    p.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/NAME-TIMESTAMP)")
    add_remote_args(p)
    p.set_defaults(func=run)
