"""`inferx-slurm launch RECIPE`: submit a deployment (or print it with --dry-run)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from inferx_slurm.commands.argtypes import add_eval_args, add_site_arg, eval_sets
from inferx_slurm.commands.output import stderr_reporter
from inferx_slurm.commands.remote import add_remote_args, remote_from_args
from inferx_slurm.job.deployment import build_deployment
from inferx_slurm.job.dry_run import dry_run_text
from inferx_slurm.job.handle import RunError
from inferx_slurm.job.paths import JobPaths, SweepPaths
from inferx_slurm.job.phases import Phase
from inferx_slurm.job.submit import build_for_submit, check_deployment, default_results_dir, submit_deployments
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.results.table import format_table, served_line, validity_lines
from inferx_slurm.results.validity import EXIT_INVALID, invalid_rows
from inferx_slurm.sweeps.expand import expand
from inferx_slurm.sweeps.packing import hms, pack_seconds
from inferx_slurm.sweeps.state import done_points, format_progress, progress
from inferx_slurm.sweeps.state import rows as sweep_rows
from inferx_slurm.sweeps.submit import PackedJob, fit_deployments, plan_sweep, submit_sweep, sweep_mode
from inferx_slurm.evals.results import failure_line, failures
from inferx_slurm.evals.results import format_table as eval_table
from inferx_slurm.recipe.evals import require_eval_section


def run(args: argparse.Namespace) -> int:
    recipe = Recipe.load(args.recipe, site=args.site)
    if sets := eval_sets(args):
        require_eval_section(recipe.eval, sets)
        recipe = recipe.with_overrides(sets)
    mode = "packed" if args.pack else args.mode
    if recipe.sweep is not None or mode or args.resume:
        return _run_sweep(args, recipe, mode)
    out = stderr_reporter()
    points = expand(recipe)
    root = Path(args.results_dir) if args.results_dir else None
    one = root is not None and len(points) == 1
    if args.dry_run or args.remote:
        cache: dict = {}
        deps = [build_deployment(p.recipe, (root if one else (root or Path("results")) / p.name).resolve(), footprints=cache)
                for p in points]
    else:
        deps = build_for_submit([(p.recipe, root if one else default_results_dir(p.recipe, root or "results")) for p in points])
    # Checked before anything is staged, submitted or uploaded.
    deps = fit_deployments(deps, dry_run=args.dry_run, force=args.force, reporter=out)
    if args.remote:
        passthrough = [*(["--dry-run"] if args.dry_run else []), *(["--wait"] if args.wait else []),
                       *(["--force"] if args.force else []),
                       *(["--results-dir", args.results_dir] if args.results_dir else [])]
        return _remote_launch(args, recipe, passthrough)
    if args.dry_run:
        for dep in deps:
            sys.stdout.write(dry_run_text(dep, reporter=out))
        return 0
    for dep in deps:
        check_deployment(dep, force=True)  # points beyond KV capacity were checked above
    handles = submit_deployments(deps, array_name=recipe.name, reporter=out)
    for dep, h in zip(deps, handles):
        print(f"submitted {dep.name}: job {h.job_id}, results in {h.results_dir}", flush=True)
    if not args.wait:
        return 0
    return _wait_all(handles)


def _remote_launch(args: argparse.Namespace, recipe: Recipe, passthrough: list[str]) -> int:
    from inferx_slurm.commands.output import to_stderr, to_stdout

    return remote_from_args(args).launch(recipe, passthrough, out=to_stdout, err=to_stderr)


def _run_sweep(args: argparse.Namespace, recipe: Recipe, mode: str | None) -> int:
    out = stderr_reporter()
    m = sweep_mode(recipe, mode)
    resume = Path(args.resume) if args.resume else None
    done = frozenset(done_points(resume)) if resume and SweepPaths(resume).manifest.exists() else frozenset()
    if args.remote or args.dry_run:
        root = Path(args.results_dir or args.resume or f"results/{recipe.name}").resolve()
        plan = plan_sweep(recipe, m, lambda name: root / name, done, dry_run=args.dry_run, force=args.force, reporter=out)
        if args.remote:
            passthrough = [*(["--dry-run"] if args.dry_run else []), *(["--wait"] if args.wait else []),
                           *(["--force"] if args.force else []),
                           *(["--results-dir", args.results_dir] if args.results_dir else []),
                           *(["--mode", m.value]), *(["--resume", args.resume] if args.resume else [])]
            return _remote_launch(args, recipe, passthrough)
        if plan.packs:
            sys.stdout.write(pack_plan_text(recipe, plan.packs))
        for dep in plan.deployments + [d for j in plan.packs for _, d in j.entries]:
            sys.stdout.write(dry_run_text(dep, reporter=out))
        return 0
    root, handles = submit_sweep(recipe, Path(args.results_dir) if args.results_dir else None, mode=m.value, resume=resume,
                                 force=args.force, reporter=out)
    print(f"sweep {recipe.name} ({m.value}): results root {root}", flush=True)
    if not handles:
        print("every point of the sweep is already done; nothing submitted")
    for h in handles:
        print(f"submitted {h.results_dir.name}: job {h.job_id}, results in {h.results_dir}", flush=True)
    if not args.wait:
        return 0
    return _wait_sweep(root, handles)


def pack_plan_text(recipe: Recipe, jobs: list[PackedJob]) -> str:
    out = ["# packed sweep: one allocation per shape, deployments one after another"]
    for p in (j.pack for j in jobs):
        out.append(f"# allocation {p.index}: {p.nodes} nodes, about {hms(pack_seconds(recipe, p))} needed "
                   f"of slurm.time {recipe.slurm.time}, {len(p.starts)} engine starts")
        for k, s in enumerate(p.starts):
            out.append(f"#   engine start {k}: " + ", ".join(f"{d.name} ({len(d.recipe.benchmark.concurrency)} points)"
                                                        for d in s.sweep_points))
    return "\n".join(out) + "\n\n"


def _wait_sweep(root: Path, handles: list) -> int:
    def cancel(signum, _frame):
        for job_id in sorted({h.job_id.split("_")[0] for h in handles}):
            next(h for h in handles if h.job_id.split("_")[0] == job_id).cancel()
        print(f"\ncancelling the sweep's jobs ({signal.Signals(signum).name})", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    last = None
    try:
        while True:
            p = progress(root)
            shown = (p["done"], p["running"], p["left"], tuple(p["failed_runs"]))
            if shown != last:
                print(format_progress(p), flush=True)
                last = shown
            if all(h.finished() for h in handles):
                break
            time.sleep(2)
    finally:
        for s, f in old.items():
            signal.signal(s, f)
    rc = 0
    for h in handles:
        st = h.status()
        if st.phase is not Phase.done:
            rc = 1
            diag = st.diagnosis or f"ended {st.slurm_state} before it ran (phase {st.phase.value})"
            print(f"{h.results_dir.name} FAILED:\n{diag}", file=sys.stderr, flush=True)
    rows = sweep_rows(root)
    print(format_table(rows))
    print(f"results: {root}/*/{JobPaths.SUMMARY}; re-run with --resume {root} to run what is not done")
    return rc or (EXIT_INVALID if invalid_rows(rows) else 0)


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
                summary = h.wait(on_status=lambda st, h=h: print(f"job {h.job_id}: {st.phase.value} ({st.slurm_state})", flush=True))
                print(format_table(summary["rows"]))
                print(served_line(summary))
                for line in validity_lines(summary):
                    print(line)
                if summary.get("eval"):
                    print(eval_table(summary["eval"]))
                for t in failures(summary.get("eval")):
                    print(failure_line(t), file=sys.stderr)
                    rc = 1
                print(f"results: {h.paths.summary}")
                if invalid_rows(summary["rows"]):
                    print(f"job {h.job_id}: {len(invalid_rows(summary['rows']))} invalid point(s): not results", file=sys.stderr, flush=True)
                    rc = rc or EXIT_INVALID
            except RunError as e:
                print(f"job {h.job_id} FAILED:\n{e}", file=sys.stderr, flush=True)
                print(f"logs kept in {h.paths.logs}", file=sys.stderr)
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
    p.add_argument("--wait", action="store_true", help="wait for the run, print the results table, exit non-zero on failure "
                   f"({EXIT_INVALID} when it finished but some point is invalid)")
    p.add_argument("--force", action="store_true",
                   help="run benchmark points beyond a role's KV capacity (refused, or skipped in a sweep, without it)")
    p.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/NAME-TIMESTAMP)")
    p.add_argument("--mode", choices=["array", "jobs", "packed"], help="how a sweep goes to Slurm (default: the recipe's sweep.mode)")
    p.add_argument("--pack", action="store_true", help="same as --mode packed: deployments one after another in one allocation")
    add_site_arg(p)
    add_eval_args(p)
    p.add_argument("--resume", metavar="ROOT", help="a sweep's results root: run only the points not complete there")
    add_remote_args(p)
    p.set_defaults(func=run)
