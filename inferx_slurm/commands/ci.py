"""`inferx-slurm ci RECIPE`: one CI matrix point, from the environment InferenceX's workflows
pass to result files, a step summary and an exit code that says what failed."""

from __future__ import annotations

import argparse
import os

from inferx_slurm.results.baseline import DEFAULT_THRESHOLDS, parse_thresholds
from inferx_slurm.ci.env import parse_sets
from inferx_slurm.ci.run import CIOptions, publish, run_ci, run_ci_remote
from inferx_slurm.commands.argtypes import add_eval_args, add_site_arg, eval_sets
from inferx_slurm.commands.output import stdout_reporter
from inferx_slurm.commands.remote import add_remote_args, remote_from_args


def run(args: argparse.Namespace) -> int:
    opts = CIOptions(
        recipe=args.recipe, sets={**eval_sets(args), **parse_sets(args.set)}, baseline=args.baseline,
        thresholds=parse_thresholds(args.threshold), results_dir=args.results_dir, out_dir=args.out_dir,
        archive_max_bytes=int(args.archive_max_mb * (1 << 20)), poll_s=args.poll, site=args.site, report=args.report,
    )
    out = stdout_reporter()
    if args.remote:
        code, rep = run_ci_remote(opts, os.environ, remote_from_args(args), out)
    else:
        code, rep = run_ci(opts, os.environ, out)
    publish(rep, os.environ)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    defaults = ", ".join(f"{k} {v[1]:.0f}%%" for k, v in DEFAULT_THRESHOLDS.items())
    p = sub.add_parser(
        "ci",
        help="run one CI matrix point: result files, step summary, outputs, exit code per failure kind",
        description="Run RECIPE with overrides from the CI environment (InferenceX variable names: MODEL, IMAGE, ISL, OSL, "
        "CONC_LIST, FRAMEWORK, PREFILL_*/DECODE_*, RESULT_FILENAME, ...) and --set, wait, and write per-point result JSONs "
        "in InferenceX's format, LOGS/, multinode_server_logs.tar.gz, the $GITHUB_STEP_SUMMARY report and $GITHUB_OUTPUT keys. Exit: 0 ok, 2 recipe/environment, "
        "3 infrastructure, 4 engine, 5 regression against --baseline, 6 benchmark client, 7 accuracy below an eval threshold, 1 internal.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe file (.yaml/.json)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a recipe field (repeatable; wins over the environment), e.g. engine.args.speedup-ratio=2")
    p.add_argument("--baseline", metavar="DIR|FILE", help="earlier results dir, summary.json, or InferenceX agg_*.json file(s) to gate against")
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help=f"allowed worsening per metric in %% (repeatable; 'off' drops one); defaults: {defaults}")
    p.add_argument("--results-dir", metavar="DIR", help="the run's results dir (default: results/NAME-TIMESTAMP)")
    p.add_argument("--out-dir", metavar="DIR", help="where result JSONs, LOGS/ and the logs archive go (default: $GITHUB_WORKSPACE, else .)")
    p.add_argument("--archive-max-mb", type=float, default=50.0, metavar="MB", help="size limit of multinode_server_logs.tar.gz (default 50)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between status polls (default 2)")
    p.add_argument("--report", metavar="FILE", help="also write the run's report (rows, checks, diagnosis, provenance) as JSON to FILE")
    add_site_arg(p)
    add_eval_args(p)
    add_remote_args(p)
    p.set_defaults(func=run)
