"""What `inferx-slurm ci` tells a CI system: exit codes, the Markdown step summary, step outputs
and workflow commands (the result files are `ci.inferencex`'s). Pure: no I/O.

Exit codes, so a workflow can tell failures apart:

| code | meaning |
|---|---|
| 0 | the run finished and passed the baseline gate (if any) |
| 2 | recipe or environment error: nothing was submitted |
| 3 | infrastructure failure: a node, Slurm, the image, staging, a node's weight cache, discovery infra, the NIXL fabric preflight, the time limit |
| 4 | engine failure: a worker or the frontend exited, never became ready, stalled, or runs other versions than the recipe pins |
| 5 | benchmark regression: a metric dropped by more than its threshold against `--baseline` |
| 6 | benchmark client failure: aiperf crashed, wrote nothing, or no request of a point completed |
| 7 | invalid result: the run finished, but some point is no result (its KV transfer failed or decode recomputed the prompts, too many requests failed, no or short outputs); no result file is written for it |
| 8 | accuracy below threshold: an eval task scored under its threshold |
| 1 | anything else (an internal error) |
| 130 | cancelled |
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.evals.results import failure_line, failures, table_rows
from inferx_slurm.job.phases import FaultKind
from inferx_slurm.results import kv_capacity, validity

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_RECIPE = 2
EXIT_INFRA = 3
EXIT_ENGINE = 4
EXIT_REGRESSION = 5
EXIT_BENCHMARK = 6
EXIT_INVALID = validity.EXIT_INVALID
EXIT_ACCURACY = 8
EXIT_CANCELLED = 130


class Category(str, Enum):
    """What kind of failure a CI run had; each has its exit code."""

    recipe = "recipe"
    infrastructure = "infrastructure"
    engine = "engine"
    regression = "regression"
    benchmark = "benchmark"
    invalid = "invalid"  # the run finished, but some point is no result (results/validity.py)
    accuracy = "accuracy"  # an eval task scored under its threshold
    cancelled = "cancelled"
    internal = "internal"


CATEGORY_EXIT = {
    Category.recipe: EXIT_RECIPE,
    Category.infrastructure: EXIT_INFRA,
    Category.engine: EXIT_ENGINE,
    Category.regression: EXIT_REGRESSION,
    Category.benchmark: EXIT_BENCHMARK,
    Category.invalid: EXIT_INVALID,
    Category.accuracy: EXIT_ACCURACY,
    Category.cancelled: EXIT_CANCELLED,
    Category.internal: EXIT_INTERNAL,
}

_FAULT_CATEGORY = {
    FaultKind.node_down: Category.infrastructure, FaultKind.infra: Category.infrastructure,
    FaultKind.install: Category.infrastructure, FaultKind.time_limit: Category.infrastructure,
    # A node that cannot hold the weights model.node_cache requires: its disk, like staging's.
    FaultKind.node_cache: Category.infrastructure,
    # Nodes that cannot move KV bytes to each other: the fabric, not the engine.
    FaultKind.fabric: Category.infrastructure,
    FaultKind.not_ready: Category.engine, FaultKind.stalled: Category.engine,
    FaultKind.engine_fatal: Category.engine, FaultKind.eval: Category.engine,
    FaultKind.client: Category.benchmark, FaultKind.cancelled: Category.cancelled,
}


def classify_fault(kind: Optional[str], message: str) -> Category:
    """The category of a failed run, from the driver's fault kind and diagnosis."""
    if kind is None:
        # The job ended before its driver could say why: Slurm or a node took it away.
        return Category.infrastructure
    if kind == FaultKind.exited:
        # The discovery servers are infrastructure; a worker or the frontend is the engine.
        return Category.infrastructure if message.startswith("infra ") else Category.engine
    try:
        return _FAULT_CATEGORY.get(FaultKind(kind), Category.internal)
    except ValueError:
        return Category.internal


class CIReport(BaseModel):
    """What one CI run reports: written as `ci-report.json` (in the results dir, and at
    `--report`), read back by `ci --remote`, and rendered as the step summary and outputs.
    Only the fields a run reached are written."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str
    exit_code: int = EXIT_OK
    category: Optional[Category] = None
    warnings: list[str] = Field(default_factory=list)
    env_used: Optional[dict[str, str]] = None
    topology: Optional[str] = None
    job_id: Optional[str] = None
    results_dir: Optional[str] = None
    diagnosis: Optional[str] = None
    rows: Optional[list[dict[str, Any]]] = None
    partial: Optional[bool] = None
    plan: Optional[list[dict[str, Any]]] = Field(None, description="the plan's workers")
    provenance: Optional[dict[str, Any]] = Field(None, description="provenance.fields: the comparable facts, flat")
    provenance_doc: Optional[dict[str, Any]] = Field(None, description="provenance.json as recorded")
    partition: Optional[str] = None
    nodes: Optional[list[str]] = None
    checks: Optional[list[dict[str, Any]]] = Field(None, description="the baseline gate's comparisons")
    baseline: Optional[str] = None
    archive: Optional[str] = None
    files: Optional[list[str]] = None
    invalid_points: Optional[list[str]] = Field(None, description="why each invalid point is no result")
    kv_capacity: Optional[list[dict[str, Any]]] = Field(None, description="each worker's KV capacity, engine's vs plan's")
    eval: Optional[dict[str, Any]] = Field(None, description="the summary's eval block")

    @classmethod
    def start(cls, name: str) -> "CIReport":
        return cls(name=name, exit_code=EXIT_OK, category=None, warnings=[])

    def failed(self, category: Category, diagnosis: Optional[str] = None) -> None:
        self.category, self.exit_code = category, CATEGORY_EXIT[category]
        if diagnosis is not None:
            self.diagnosis = diagnosis

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# --- reporting -------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def flagged_points(rows: list[dict[str, Any]]) -> list[str]:
    """Points that finished but should not pass unnoticed."""
    out = []
    for r in rows:
        where = f"ISL {r['isl']} OSL {r['osl']} conc {r['concurrency']}"
        if int(r.get("failed") or 0):
            out.append(f"{where}: {r['failed']} of {int(r.get('failed') or 0) + int(r.get('completed') or 0)} requests failed")
        if r.get("latency_source") == "aiperf summary":
            out.append(f"{where}: the client wrote no per-request records; latencies are aiperf's summary, the "
                       "full latency set, window and token totals are missing")
    return out


def _transfers(row: dict[str, Any]) -> str:
    status = row.get("kv_transfer")
    if status in (None, validity.KVStatus.not_applicable.value):
        return "-"
    if row.get("kv_transfers") is None:
        return str(status)
    return f"{status}: {row['kv_transfers']} ok, {row.get('kv_transfer_failures') or 0} failed"


def invalid_points(rows: list[dict[str, Any]]) -> list[str]:
    return [validity.invalid_line(r) for r in validity.invalid_rows(rows)]


def capacity_warnings(caps: list[dict[str, Any]]) -> list[str]:
    return kv_capacity.warnings(caps)


def power_line(rows: list[dict[str, Any]]) -> str:
    """One line on energy: how it was measured, or why it is not valid."""
    bad = sorted({why for r in rows if not r.get("power_valid") for why in r.get("power_invalid_reasons") or ["no data"]})
    if bad:
        return f"Energy not valid ({', '.join(bad)}): `power_valid` 0 in the result files."
    sources = sorted({r.get("power_source") for r in rows if r.get("power_source")})
    return f"Energy from {', '.join(sources)} over each point's serving window." if sources else ""


def _category(rep: CIReport) -> str:
    return rep.category.value if rep.category else ""


def markdown(rep: CIReport) -> str:
    """The step summary: outcome, plan, results, baseline gate, provenance, diagnosis, files."""
    ok = rep.exit_code == EXIT_OK
    head = "passed" if ok else f"FAILED: {_category(rep) or None} (exit {rep.exit_code})"
    out = [f"## inferx-slurm ci: {rep.name} ({rep.topology or '-'}): {head}", ""]
    meta = [f"job {rep.job_id or '-'}"]
    if rep.partition:
        meta.append(f"partition `{rep.partition}`")
    if rep.nodes:
        meta.append(f"nodes `{','.join(rep.nodes)}`")
    out += [", ".join(meta) + f"; results dir `{rep.results_dir or '-'}`", ""]
    if rep.env_used:
        out += ["From the environment: " + ", ".join(f"`{k}={v}`" for k, v in rep.env_used.items()), ""]
    if rep.plan:
        out += ["### Plan", "", "| worker | parallel | GPUs | plan nodes |", "|---|---|---:|---|"]
        out += [f"| {w['role']}-{w['index']} | {w['parallel']} | {w['gpus']} | {', '.join(map(str, w['nodes']))} |" for w in rep.plan]
        out.append("")
    rows = rep.rows or []
    if rows:
        out += ["### Results" + (" (partial)" if rep.partial else ""), "",
                "| ISL | OSL | conc | tok/s/GPU | out tok/s/GPU | in tok/s/GPU | median TTFT ms | p99 TTFT ms | median TPOT ms | "
                "tok/s/user | p99 E2EL ms | J/out tok | done | failed | valid | KV transfers |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in rows:
            if r.get("valid") is False:  # no throughput or latency: they are not results
                out.append(f"| {r['isl']} | {r['osl']} | {r['concurrency']} |" + " - |" * 9
                           + f" {r.get('completed', '-')} | {r.get('failed', '-')} | **INVALID** | {_transfers(r)} |")
                continue
            out.append(f"| {r['isl']} | {r['osl']} | {r['concurrency']} | {_fmt(r.get('tput_per_gpu'))} | {_fmt(r.get('output_tput_per_gpu'))} | "
                       f"{_fmt(r.get('input_tput_per_gpu'))} | {_fmt(r.get('median_ttft_ms'))} | {_fmt(r.get('p99_ttft_ms'))} | "
                       f"{_fmt(r.get('median_tpot_ms'), '.2f')} | {_fmt(r.get('intvty'))} | {_fmt(r.get('p99_e2el_ms'))} | "
                       f"{_fmt(r.get('joules_per_output_token'), '.4g')} | {r.get('completed', '-')} | {r.get('failed', '-')} | "
                       f"{'yes' if r.get('valid') else '-'} | {_transfers(r)} |")
        out.append("")
        out += [f"- {validity.invalid_line(r)}" for r in validity.invalid_rows(rows)]
        out += [f"- {line}" for r in rows if (line := validity.transfer_line(r))] + [""]
        if line := power_line(rows):
            out += [line, ""]
    # Workers whose engine reports no capacity and that no plan covers (the mock engine) have nothing to show.
    caps = [c for c in rep.kv_capacity or [] if c.get("engine_tokens") is not None or c.get("planned_tokens") is not None]
    if caps:
        out += ["### KV cache capacity (tokens per DP rank)", "", "| worker | engine | source | plan | difference |", "|---|---:|---|---:|---:|"]
        for c in caps:
            out.append(f"| {c['worker']} | {_fmt(c.get('engine_tokens'), ',.0f')} | {c.get('source') or '-'} | "
                       f"{_fmt(c.get('planned_tokens'), ',.0f')} | {_fmt(c.get('difference_pct'), '+.1f')}{'%' if c.get('difference_pct') is not None else ''} |")
        out.append("")
    if rep.eval:
        out += eval_markdown(rep.eval)
    if rep.checks:
        out += [f"### Baseline gate (against `{rep.baseline}`)", "",
                "| ISL | OSL | conc | metric | baseline | this run | change | allowed | verdict |", "|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for c in rep.checks:
            out.append(f"| {c['isl']} | {c['osl']} | {c['concurrency']} | {c['metric']} | {_fmt(c['base'], '.2f')} | {_fmt(c['new'], '.2f')} | "
                       f"{c['change_pct']:+.1f}% | {c['worse_allowed_pct']:.0f}% worse | {'**REGRESSION**' if c['regressed'] else 'ok'} |")
        out.append("")
    for w in rep.warnings:
        out.append(f"> warning: {w}")
    if rep.warnings:
        out.append("")
    if rep.diagnosis:
        out += ["### Diagnosis", "", "```text", rep.diagnosis.rstrip(), "```", ""]
    if rep.provenance:
        out += ["### Provenance", ""]
        out += [f"- {k}: `{v}`" for k, v in rep.provenance.items() if v not in (None, "", [])]
        out.append("")
    if rep.files:
        out += ["### Files", ""] + [f"- `{f}`" for f in rep.files] + [""]
    return "\n".join(out)


def eval_markdown(block: dict[str, Any]) -> list[str]:
    rows = table_rows(block)
    head = (f"### Accuracy ({'passed' if block.get('passed') else 'BELOW THRESHOLD'}; concurrency {block.get('concurrency')}, "
            f"{block.get('seconds')} s on the deployment's engines)")
    return [head, "", "| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 3) + "---|---:|"] + [
        "| " + " | ".join(r[:-2] + ["**FAIL**" if r[-2] == "FAIL" else r[-2], r[-1]]) + " |" for r in rows[1:]] + [""]


def outputs(rep: CIReport) -> dict[str, str]:
    """Step outputs ($GITHUB_OUTPUT): later steps read these instead of parsing logs."""
    best = max((float(r["tput_per_gpu"]) for r in rep.rows or [] if r.get("tput_per_gpu") is not None and r.get("valid") is not False),
               default=None)
    return {
        "job_id": str(rep.job_id or ""),
        "results_dir": str(rep.results_dir or ""),
        "best_tput_per_gpu": "" if best is None else f"{best:.3f}",
        "outcome": "passed" if rep.exit_code == EXIT_OK else "failed",
        "category": _category(rep),
        "exit_code": str(rep.exit_code),
        "archive": str(rep.archive or ""),
        "eval_passed": "" if not rep.eval else str(bool(rep.eval.get("passed"))).lower(),
    }


def _escape(text: str) -> str:
    # Workflow command data: %, CR and LF must be escaped or the message is cut at the first line.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def workflow_commands(rep: CIReport) -> list[str]:
    lines = [f"::warning title=inferx-slurm::{_escape(w)}" for w in rep.warnings]
    if rep.exit_code == EXIT_ACCURACY:
        return lines + [f"::error title=inferx-slurm accuracy (exit {EXIT_ACCURACY})::{_escape(failure_line(t))}" for t in failures(rep.eval)]
    if rep.exit_code != EXIT_OK:
        first = (rep.diagnosis or _category(rep) or "failed").strip()
        lines.append(f"::error title=inferx-slurm {_category(rep) or None} (exit {rep.exit_code})::{_escape(first)}")
    return lines


def github_output(values: dict[str, str]) -> str:
    out = []
    for k, v in values.items():
        if "\n" in v:
            out += [f"{k}<<INFERX_EOF", v, "INFERX_EOF"]
        else:
            out.append(f"{k}={v}")
    return "\n".join(out) + "\n"
