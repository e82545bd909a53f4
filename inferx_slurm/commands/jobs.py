"""`inferx-slurm status|logs|cancel`: follow and control jobs that `launch` started."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inferx_slurm.errors import InferxError
from inferx_slurm.job.handle import JobHandle, attach
from inferx_slurm.job.paths import JobPaths, SweepPaths
from inferx_slurm.recipe.topology import ROLES
from inferx_slurm.results.table import format_table
from inferx_slurm.sweeps.state import format_progress, progress
from inferx_slurm.sweeps.state import rows as sweep_rows

# Every job `launch` started under ./results, and every sweep root there.
_JOBS = f"*/{JobPaths.JOB}"
_SWEEPS = f"*/{SweepPaths.MANIFEST}"


def find_job(ref: str) -> JobHandle:
    """REF is a results dir, or a job id looked up among the results dirs under ./results."""
    p = Path(ref)
    if p.is_dir():
        return attach(p)
    if ref.isdigit():
        for job in Path("results").glob(_JOBS):
            try:
                if str(json.loads(job.read_text()).get("job_id")) == ref:
                    return attach(job.parent)
            except (OSError, ValueError):
                continue
        raise InferxError(f"no results dir under ./results for job {ref}; pass the results dir instead")
    raise InferxError(f"{ref!r} is neither a results dir nor a job id")


def cmd_status(args: argparse.Namespace) -> int:
    refs = [args.ref] if args.ref else [str(p.parent) for p in sorted([*Path("results").glob(_JOBS),
                                                                       *Path("results").glob(_SWEEPS)])]
    if not refs:
        print("no jobs under ./results")
        return 0
    # Every handle exists before the first asks Slurm, so one squeue answers for all of them.
    handles = {ref: find_job(ref) for ref in refs if not SweepPaths(ref).manifest.exists()}
    for ref in refs:
        if ref not in handles:
            _sweep_status(Path(ref), args, detail=bool(args.ref))
            continue
        h = handles[ref]
        st = h.status()
        if args.json:
            print(json.dumps({"job_id": h.job_id, "results_dir": str(h.results_dir), **st.as_json()}))
            continue
        print(f"{h.job_id:>8}  {st.slurm_state:<10} {st.phase.value:<12} {h.results_dir}")
        if st.diagnosis and args.ref:
            print(st.diagnosis)
        if args.ref and h.paths.summary.exists():
            print(format_table(h.summary().rows))
    return 0


def _sweep_status(root: Path, args: argparse.Namespace, detail: bool) -> None:
    p = progress(root)
    if args.json:
        print(json.dumps({"sweep": str(root), **p}))
        return
    print(f"sweep {root}: {format_progress(p)}")
    if not detail:
        return
    runs = sorted(q.parent for q in root.glob(_JOBS))
    # Every handle exists before the first asks Slurm, so one squeue answers for all of them.
    for h in [attach(run) for run in runs]:
        st = h.status()
        print(f"{h.job_id:>10}  {st.slurm_state:<10} {st.phase.value:<12} {h.results_dir.name}")
    print(format_table(sweep_rows(root)))


def cmd_logs(args: argparse.Namespace) -> int:
    h = find_job(args.ref)
    if args.follow:
        for line in h.follow(args.role, args.index):
            print(line, flush=True)
        return 0
    files = h.log_files(args.role, args.index)
    if not files:
        raise InferxError(f"no logs for role={args.role} index={args.index} in {h.paths.logs}")
    for f in files:
        sys.stdout.write(f"==> {f} <==\n{f.read_text(errors='replace')}\n")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    h = find_job(args.ref)
    h.cancel()
    print(f"cancel requested for job {h.job_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="state of launched jobs", description="Slurm state and run phase of jobs under ./results, or of one job.")
    p.add_argument("ref", nargs="?", metavar="JOBID|RESULTS", help="job id or results dir (default: all under ./results)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print or follow a job's logs", description="Print (or -f follow) the per-step logs of a job.")
    p.add_argument("ref", metavar="JOBID|RESULTS")
    p.add_argument("--role", choices=[*ROLES, "frontend", "infra"], help="whose logs: a worker role, or a service step")
    p.add_argument("--index", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a launched job", description="scancel a job that launch started.")
    p.add_argument("ref", metavar="JOBID|RESULTS")
    p.set_defaults(func=cmd_cancel)
