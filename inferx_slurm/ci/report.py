"""What `inferx-slurm ci` tells a CI system: exit codes, result files in InferenceX's format,
the Markdown step summary, step outputs and workflow commands. Pure: no I/O.

Exit codes, so a workflow can tell failures apart:

| code | meaning |
|---|---|
| 0 | the run finished and passed the baseline gate (if any) |
| 2 | recipe or environment error: nothing was submitted |
| 3 | infrastructure failure: a node, Slurm, the image, staging, discovery infra, the time limit |
| 4 | engine failure: a worker or the frontend exited, never became ready, stalled, or runs other versions than the recipe pins |
| 5 | benchmark regression: a metric dropped by more than its threshold against `--baseline` |
| 6 | benchmark client failure: aiperf crashed, wrote nothing, or no request of a point completed |
| 1 | anything else (an internal error) |
| 130 | cancelled |
"""

from __future__ import annotations

from typing import Any, Optional

from inferx_slurm.recipe.topology import ParallelKind, Topology

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_RECIPE = 2
EXIT_INFRA = 3
EXIT_ENGINE = 4
EXIT_REGRESSION = 5
EXIT_BENCHMARK = 6
EXIT_CANCELLED = 130

CATEGORY_EXIT = {
    "recipe": EXIT_RECIPE,
    "infrastructure": EXIT_INFRA,
    "engine": EXIT_ENGINE,
    "regression": EXIT_REGRESSION,
    "benchmark": EXIT_BENCHMARK,
    "cancelled": EXIT_CANCELLED,
    "internal": EXIT_INTERNAL,
}


def classify_fault(kind: Optional[str], message: str) -> str:
    """The category of a failed run, from the driver's fault kind and diagnosis."""
    if kind in ("node_down", "infra", "install", "time_limit"):
        return "infrastructure"
    if kind == "exited":
        # The discovery servers are infrastructure; a worker or the frontend is the engine.
        return "infrastructure" if message.startswith("infra ") else "engine"
    if kind in ("not_ready", "stalled"):
        return "engine"
    if kind == "client":
        return "benchmark"
    if kind == "cancelled":
        return "cancelled"
    if kind is None:
        # The job ended before its driver could say why: Slurm or a node took it away.
        return "infrastructure"
    return "internal"


# --- result files (InferenceX names and units) ---------------------------------------------------


def _role_fields(topo: Topology, role: str) -> dict[str, Any]:
    r = topo.role(role)
    par = r.parallel
    # InferenceX writes DEP8 as tp 8, ep 8, dp-attention true: "tp" is the worker's width.
    # Its single-node (aggregated) records carry the same fields without a role prefix.
    pre = "" if role == "agg" else f"{role}_"
    return {
        f"{pre}tp": par.size,
        f"{pre}ep": par.size if par.kind in (ParallelKind.TEP, ParallelKind.DEP) else 1,
        f"{pre}dp_attention": "true" if par.kind is ParallelKind.DEP else "false",
        f"{pre}num_workers": r.workers,
    }


def _s(ms: Any) -> Optional[float]:
    return None if ms is None else float(ms) / 1000.0


def point_name(prefix: str, row: dict[str, Any], topo: Topology) -> str:
    """`PREFIX_isl_I_osl_O_concN_gpus_G_ctx_P_gen_D.json`, the layout InferenceX's multi-node
    runners leave in the workspace (ctx/gen: prefill/decode worker counts)."""
    gpus = int(row["num_prefill_gpu"]) + int(row["num_decode_gpu"]) + int(row.get("num_agg_gpu") or 0)
    head = f"{prefix}_isl_{row['isl']}_osl_{row['osl']}_conc{row['concurrency']}_gpus_{gpus}"
    if topo.aggregated:
        return f"{head}_agg_{topo.role('agg').workers}.json"
    return f"{head}_ctx_{topo.role('prefill').workers}_gen_{topo.role('decode').workers}.json"


def raw_result(row: dict[str, Any], *, model: str, job_id: Optional[str]) -> dict[str, Any]:
    """The per-point client result in benchmark_serving's names (milliseconds), which
    InferenceX's result processing reads."""
    return {
        "model_id": model,
        "max_concurrency": row["concurrency"],
        "completed": row.get("completed"),
        "failed": row.get("failed"),
        "total_token_throughput": row.get("total_token_throughput"),
        "output_throughput": row.get("output_throughput"),
        "mean_ttft_ms": row.get("mean_ttft_ms"),
        "median_ttft_ms": row.get("median_ttft_ms"),
        "p99_ttft_ms": row.get("p99_ttft_ms"),
        "mean_tpot_ms": row.get("mean_tpot_ms"),
        "median_tpot_ms": row.get("median_tpot_ms"),
        "mean_itl_ms": row.get("mean_itl_ms"),
        "slurm_job_id": job_id,
    }


def agg_result(row: dict[str, Any], *, topo: Topology, total_nodes: int, labels: dict[str, Any],
               framework: str, model: str, image: Optional[str], spec_decoding: Optional[str] = None) -> dict[str, Any]:
    """The aggregated per-point record InferenceX uploads (`agg_*.json`): throughput per GPU,
    latencies in seconds, interactivity in tokens/s/user."""
    median_tpot = row.get("median_tpot_ms")
    doc: dict[str, Any] = {
        "hw": labels.get("hw"),
        "conc": row["concurrency"],
        "image": image,
        "model": labels.get("model") or model,
        "infmax_model_prefix": labels.get("infmax_model_prefix"),
        "framework": framework,
        "precision": labels.get("precision"),
        "spec_decoding": spec_decoding or "none",
        "disagg": not topo.aggregated,
        "is_multinode": total_nodes > 1,
        "isl": row["isl"],
        "osl": row["osl"],
        **{k: v for r in topo.roles for k, v in _role_fields(topo, r).items()},
        "num_prefill_gpu": row["num_prefill_gpu"],
        "num_decode_gpu": row["num_decode_gpu"],
        "tput_per_gpu": row.get("tput_per_gpu"),
        "output_tput_per_gpu": row.get("output_tput_per_gpu"),
        "input_tput_per_gpu": row.get("input_tput_per_gpu"),
        "mean_ttft": _s(row.get("mean_ttft_ms")),
        "median_ttft": _s(row.get("median_ttft_ms")),
        "p99_ttft": _s(row.get("p99_ttft_ms")),
        "mean_tpot": _s(row.get("mean_tpot_ms")),
        "median_tpot": _s(median_tpot),
        "mean_intvty": row.get("intvty"),
        "median_intvty": (1000.0 / median_tpot) if median_tpot else None,
        "avg_power_w": row.get("avg_gpu_power_w"),
    }
    if row.get("acceptance_length") is not None:
        doc["spec_acceptance_length"] = row["acceptance_length"]
    if labels.get("exp_name"):
        doc["exp_name"] = labels["exp_name"]
    return doc


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
    return out


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
                "| ISL | OSL | conc | tok/s/GPU | out tok/s/GPU | in tok/s/GPU | median TTFT ms | median TPOT ms | tok/s/user | done | failed |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['isl']} | {r['osl']} | {r['concurrency']} | {_fmt(r.get('tput_per_gpu'))} | {_fmt(r.get('output_tput_per_gpu'))} | "
                       f"{_fmt(r.get('input_tput_per_gpu'))} | {_fmt(r.get('median_ttft_ms'))} | {_fmt(r.get('median_tpot_ms'), '.2f')} | "
                       f"{_fmt(r.get('intvty'))} | {r.get('completed', '-')} | {r.get('failed', '-')} |")
        out.append("")
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


def outputs(rep: dict[str, Any]) -> dict[str, str]:
    """Step outputs ($GITHUB_OUTPUT): later steps read these instead of parsing logs."""
    best = max((float(r["tput_per_gpu"]) for r in rep.get("rows") or [] if r.get("tput_per_gpu") is not None), default=None)
    return {
        "job_id": str(rep.get("job_id") or ""),
        "results_dir": str(rep.get("results_dir") or ""),
        "best_tput_per_gpu": "" if best is None else f"{best:.3f}",
        "outcome": "passed" if rep["exit_code"] == EXIT_OK else "failed",
        "category": rep.get("category") or "",
        "exit_code": str(rep["exit_code"]),
        "archive": str(rep.get("archive") or ""),
    }


def _escape(text: str) -> str:
    # Workflow command data: %, CR and LF must be escaped or the message is cut at the first line.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def workflow_commands(rep: dict[str, Any]) -> list[str]:
    lines = [f"::warning title=inferx-slurm::{_escape(w)}" for w in rep.get("warnings") or []]
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
