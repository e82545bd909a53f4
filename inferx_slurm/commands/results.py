"""`inferx-slurm results DIR`: the results table of a run."""

from __future__ import annotations

import argparse
import json
import sys

from inferx_slurm.results import provenance
from inferx_slurm.errors import InferxError
from inferx_slurm.evals.results import compare as compare_evals
from inferx_slurm.evals.results import format_table as eval_table
from inferx_slurm.results.table import (LONG_COLUMNS, LONG_DELTA_METRICS, columns_for, compare, format_table, load_summary, served_line,
                                        validity_lines)


def run(args: argparse.Namespace) -> int:
    if args.pareto:
        from inferx_slurm.fsutil import atomic_write
        from inferx_slurm.results.pareto import pareto_svg, series_label

        series = [(series_label(s := load_summary(d), d), s.get("rows", [])) for d in [args.dir, *args.more]]
        try:
            atomic_write(args.pareto, pareto_svg(series))
        except ValueError as e:
            raise InferxError(str(e)) from None
        print(f"wrote {args.pareto} ({len(series)} runs)")
        return 0
    if args.more:
        raise InferxError("several results dirs only go with --pareto")
    summary = load_summary(args.dir)
    if args.compare:
        base = load_summary(args.compare)
        print(f"{summary.get('name')} vs {base.get('name')} (new vs base; ok = better, !! = worse)")
        print(compare(base, summary, LONG_DELTA_METRICS if args.long else None))
        if acc := compare_evals(base.get("eval"), summary.get("eval")):
            print(f"accuracy (score change, new vs base)\n{acc}")
        for d in provenance.differences(provenance.load(args.compare), provenance.load(args.dir)):
            print(f"warning: runs differ in {d}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    flag = " (PARTIAL: the run failed before finishing)" if summary.get("partial") else ""
    print(f"{summary.get('name')} {summary.get('topology')}, {summary.get('total_gpus')} GPUs{flag}")
    columns = columns_for([c.strip() for c in args.columns.split(",") if c.strip()]) if args.columns else None
    print(format_table(summary.get("rows", []), LONG_COLUMNS if args.long else columns))
    print(served_line(summary))
    for line in validity_lines(summary):
        print(line)
    if summary.get("eval"):
        print(eval_table(summary["eval"]))
    print("\n".join(provenance.format_lines(provenance.load(args.dir))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="print the results table of a run", description="Print summary.json of a results dir as a table.")
    p.add_argument("dir", metavar="DIR", help="results dir (or its summary.json)")
    p.add_argument("more", nargs="*", metavar="DIR", help="more results dirs (with --pareto)")
    p.add_argument("--json", action="store_true", help="print summary.json as is")
    p.add_argument("--pareto", metavar="SVG", help="write throughput/GPU vs interactivity of every run, with the frontier, as SVG")
    p.add_argument("--compare", metavar="BASE", help="print the change against another run's results dir, per point, in %%")
    p.add_argument("--long", action="store_true", help="the full result set: mean/median/std/p90/p99/p99.9 of TTFT, TPOT, ITL "
                   "and E2EL (ms), measured ISL/OSL, window, token totals, success rate, energy (with --compare: every latency statistic)")
    p.add_argument("--columns", metavar="KEYS", help="the table's columns: summary row keys separated by commas, e.g. p99_e2el_ms,joules_per_output_token")
    p.set_defaults(func=run)
