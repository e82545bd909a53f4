"""What `inferx-slurm ci` tells a CI system: exit codes, the Markdown step summary, step outputs
and workflow commands (the result files are `ci.inferencex`'s). Pure: no I/O.

Exit codes, so a workflow can tell failures apart:

| code | meaning |
|---|---|
| 0 | the run finished and passed the baseline gate (if any) |
| 2 | recipe or environment error: nothing was submitted |
| 3 | infrastructure failure: a node, Slurm, the image, staging, discovery infra, the time limit |
| 4 | engine failure: a worker or the frontend exited, never became ready, stalled, or runs other versions than the recipe pins |
| 5 | benchmark regression: a metric dropped by more than its threshold against `--baseline` |
| 6 | benchmark client failure: aiperf crashed, wrote nothing, or no request of a point completed |
| 7 | invalid result: the run finished, but some point is no result (its KV transfer failed or decode recomputed the prompts, too many requests failed, no or short outputs); no result file is written for it |
| 8 | accuracy below threshold: an eval task scored under its threshold |
| 1 | anything else (an internal error) |
| 130 | cancelled |
"""

from __future__ import annotations

from typing import Any, Optional

from inferx_slurm.evals.results import failure_line, failures, table_rows
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

CATEGORY_EXIT = {
    "recipe": EXIT_RECIPE,
    "infrastructure": EXIT_INFRA,
    "engine": EXIT_ENGINE,
    "regression": EXIT_REGRESSION,
    "benchmark": EXIT_BENCHMARK,
    "invalid": EXIT_INVALID,
    "accuracy": EXIT_ACCURACY,
    "cancelled": EXIT_CANCELLED,
    "internal": EXIT_INTERNAL,
}


def classify_fault(kind: Optional[str], message: str) -> str:
    """The category of a failed run, from the driver's fault kind and diagnosis."""
    if kind in ("node_down", "infra", "install", "time_limit", "fabric"):
        return "infrastructure"
    if kind == "exited":
        # The discovery servers are infrastructure; a worker or the frontend is the engine.
        return "infrastructure" if message.startswith("infra ") else "engine"
    if kind in ("not_ready", "stalled", "engine_fatal", "eval"):
        return "engine"
    if kind == "client":
        return "benchmark"
    if kind == "cancelled":
        return "cancelled"
    if kind is None:
        # The job ended before its driver could say why: Slurm or a node took it away.
        return "infrastructure"
    return "internal"


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


def markdown(rep: dict[str, Any]) -> str:
    """The step summary: outcome, plan, results, baseline gate, provenance, diagnosis, files."""
    ok = rep["exit_code"] == EXIT_OK
    head = "passed" if ok else f"FAILED: {rep['category']} (exit {rep['exit_code']})"
    out = [f"## inferx-slurm ci: {rep['name']} ({rep.get('topology') or '-'}): {head}", ""]
    meta = [f"job {rep.get('job_id') or '-'}"]
    if rep.get("partition"):
        meta.append(f"partition `{rep['partition']}`")
    if rep.get("nodes"):
        meta.append(f"nodes `{','.join(rep['nodes'])}`")
    out += [", ".join(meta) + f"; results dir `{rep.get('results_dir') or '-'}`", ""]
    if rep.get("env_used"):
        out += ["From the environment: " + ", ".join(f"`{k}={v}`" for k, v in rep["env_used"].items()), ""]
    if rep.get("plan"):
        out += ["### Plan", "", "| worker | parallel | GPUs | plan nodes |", "|---|---|---:|---|"]
        out += [f"| {w['role']}-{w['index']} | {w['parallel']} | {w['gpus']} | {', '.join(map(str, w['nodes']))} |" for w in rep["plan"]]
        out.append("")
    rows = rep.get("rows") or []
    if rows:
        out += ["### Results" + (" (partial)" if rep.get("partial") else ""), "",
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
    caps = [c for c in rep.get("kv_capacity") or [] if c.get("engine_tokens") is not None or c.get("planned_tokens") is not None]
    if caps:
        out += ["### KV cache capacity (tokens per DP rank)", "", "| worker | engine | source | plan | difference |", "|---|---:|---|---:|---:|"]
        for c in caps:
            out.append(f"| {c['worker']} | {_fmt(c.get('engine_tokens'), ',.0f')} | {c.get('source') or '-'} | "
                       f"{_fmt(c.get('planned_tokens'), ',.0f')} | {_fmt(c.get('difference_pct'), '+.1f')}{'%' if c.get('difference_pct') is not None else ''} |")
        out.append("")
    if rep.get("eval"):
        out += eval_markdown(rep["eval"])
    if rep.get("checks"):
        out += [f"### Baseline gate (against `{rep.get('baseline')}`)", "",
                "| ISL | OSL | conc | metric | baseline | this run | change | allowed | verdict |", "|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for c in rep["checks"]:
            out.append(f"| {c['isl']} | {c['osl']} | {c['concurrency']} | {c['metric']} | {_fmt(c['base'], '.2f')} | {_fmt(c['new'], '.2f')} | "
                       f"{c['change_pct']:+.1f}% | {c['worse_allowed_pct']:.0f}% worse | {'**REGRESSION**' if c['regressed'] else 'ok'} |")
        out.append("")
    for w in rep.get("warnings") or []:
        out.append(f"> warning: {w}")
    if rep.get("warnings"):
        out.append("")
    if rep.get("diagnosis"):
        out += ["### Diagnosis", "", "```text", rep["diagnosis"].rstrip(), "```", ""]
    if rep.get("provenance"):
        out += ["### Provenance", ""]
        out += [f"- {k}: `{v}`" for k, v in rep["provenance"].items() if v not in (None, "", [])]
        out.append("")
    if rep.get("files"):
        out += ["### Files", ""] + [f"- `{f}`" for f in rep["files"]] + [""]
    return "\n".join(out)


def eval_markdown(block: dict[str, Any]) -> list[str]:
    rows = table_rows(block)
    head = (f"### Accuracy ({'passed' if block.get('passed') else 'BELOW THRESHOLD'}; concurrency {block.get('concurrency')}, "
            f"{block.get('seconds')} s on the deployment's engines)")
    return [head, "", "| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 3) + "---|---:|"] + [
        "| " + " | ".join(r[:-2] + ["**FAIL**" if r[-2] == "FAIL" else r[-2], r[-1]]) + " |" for r in rows[1:]] + [""]


def outputs(rep: dict[str, Any]) -> dict[str, str]:
    """Step outputs ($GITHUB_OUTPUT): later steps read these instead of parsing logs."""
    best = max((float(r["tput_per_gpu"]) for r in rep.get("rows") or [] if r.get("tput_per_gpu") is not None and r.get("valid") is not False),
               default=None)
    return {
        "job_id": str(rep.get("job_id") or ""),
        "results_dir": str(rep.get("results_dir") or ""),
        "best_tput_per_gpu": "" if best is None else f"{best:.3f}",
        "outcome": "passed" if rep["exit_code"] == EXIT_OK else "failed",
        "category": rep.get("category") or "",
        "exit_code": str(rep["exit_code"]),
        "archive": str(rep.get("archive") or ""),
        "eval_passed": "" if not rep.get("eval") else str(bool(rep["eval"].get("passed"))).lower(),
    }


def _escape(text: str) -> str:
    # Workflow command data: %, CR and LF must be escaped or the message is cut at the first line.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def workflow_commands(rep: dict[str, Any]) -> list[str]:
    lines = [f"::warning title=inferx-slurm::{_escape(w)}" for w in rep.get("warnings") or []]
    if rep["exit_code"] == EXIT_ACCURACY:
        return lines + [f"::error title=inferx-slurm accuracy (exit {EXIT_ACCURACY})::{_escape(failure_line(t))}" for t in failures(rep.get("eval"))]
    if rep["exit_code"] != EXIT_OK:
        first = (rep.get("diagnosis") or rep.get("category") or "failed").strip()
        lines.append(f"::error title=inferx-slurm {rep.get('category')} (exit {rep['exit_code']})::{_escape(first)}")
    return lines


def github_output(values: dict[str, str]) -> str:
    out = []
    for k, v in values.items():
        if "\n" in v:
            out += [f"{k}<<INFERX_EOF", v, "INFERX_EOF"]
        else:
            out.append(f"{k}={v}")
    return "\n".join(out) + "\n"
