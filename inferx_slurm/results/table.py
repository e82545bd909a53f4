"""The results table: reading summaries and printing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from inferx_slurm.fsutil import read_json
from inferx_slurm.job.paths import JobPaths

COLUMNS = [
    ("isl", "ISL", "{:d}"),
    ("osl", "OSL", "{:d}"),
    ("concurrency", "conc", "{:d}"),
    ("num_prefill_gpu", "P gpu", "{:d}"),
    ("num_decode_gpu", "D gpu", "{:d}"),
    ("total_token_throughput", "tok/s", "{:.1f}"),
    ("tput_per_gpu", "tok/s/gpu", "{:.1f}"),
    ("output_tput_per_gpu", "out/s/gpu", "{:.1f}"),
    ("mean_ttft_ms", "TTFT ms", "{:.1f}"),
    ("p99_ttft_ms", "p99 TTFT", "{:.1f}"),
    ("mean_tpot_ms", "TPOT ms", "{:.2f}"),
    ("intvty", "tok/s/user", "{:.1f}"),
    ("avg_gpu_power_w", "W/gpu", "{:.0f}"),
    ("completed", "done", "{:d}"),
    ("failed", "failed", "{:d}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if fmt == "{}":
        return str(v)
    try:
        return fmt.format(int(v) if "d}" in fmt else float(v))
    except (TypeError, ValueError):
        return str(v)


AGG_COLUMN = ("num_agg_gpu", "A gpu", "{:d}")


def _latency_columns(metric: str, label: str) -> list[tuple[str, str, str]]:
    fmt = "{:.2f}" if metric in ("tpot", "itl") else "{:.1f}"
    return [(f"{s}_{metric}_ms", f"{s.replace('median', 'med')} {label}", fmt) for s in ("mean", "median", "std", "p90", "p99", "p99.9")]


# `results --long`: the full set from the client's per-request records, the window, measured
# lengths and energy.
LONG_COLUMNS = [
    ("isl", "ISL", "{:d}"),
    ("osl", "OSL", "{:d}"),
    ("measured_isl", "ISL meas", "{:.1f}"),
    ("measured_osl", "OSL meas", "{:.1f}"),
    ("concurrency", "conc", "{:d}"),
    ("tput_per_gpu", "tok/s/gpu", "{:.1f}"),
    ("output_tput_per_gpu", "out/s/gpu", "{:.1f}"),
    ("input_tput_per_gpu", "in/s/gpu", "{:.1f}"),
    ("intvty", "tok/s/user", "{:.1f}"),
    *_latency_columns("ttft", "TTFT"),
    *_latency_columns("tpot", "TPOT"),
    *_latency_columns("itl", "ITL"),
    *_latency_columns("e2el", "E2EL"),
    ("duration", "window s", "{:.1f}"),
    ("total_input_tokens", "in tok", "{:d}"),
    ("total_output_tokens", "out tok", "{:d}"),
    ("success_rate", "success", "{:.3f}"),
    ("power_valid", "power ok", "{:d}"),
    ("total_gpu_energy_j", "energy J", "{:.1f}"),
    ("avg_power_w", "W/gpu", "{:.0f}"),
    ("joules_per_output_token", "J/out tok", "{:.4g}"),
    ("joules_per_total_token", "J/tok", "{:.4g}"),
]


def columns_for(keys: list[str]) -> list[tuple[str, str, str]]:
    """`results --columns a,b`: those row keys, headed by their own name."""
    known = {k: (k, k, f) for k, _, f in COLUMNS + LONG_COLUMNS}
    return [known.get(k, (k, k, "{}")) for k in keys]


# What an invalid point still shows: its shape and request counts, no measured performance.
SHOWN_WHEN_INVALID = {"isl", "osl", "concurrency", "num_prefill_gpu", "num_decode_gpu", "num_agg_gpu", "completed", "failed",
                      "success_rate", "total_input_tokens", "total_output_tokens", "measured_isl", "measured_osl", "valid"}
VALID_COLUMN = ("valid", "valid", "{}")


def _shown(row: dict[str, Any], key: str, fmt: str) -> str:
    if key == "valid":
        return "INVALID" if row.get("valid") is False else "yes" if row.get("valid") else "-"
    if row.get("valid") is False and key not in SHOWN_WHEN_INVALID:
        return "-"
    return _cell(row, key, fmt)


def format_table(rows: list[dict[str, Any]], columns: Optional[list[tuple[str, str, str]]] = None) -> str:
    if not rows:
        return "(no results)"
    cols = list(columns or COLUMNS)
    if columns is None and any(r.get("num_agg_gpu") for r in rows):  # aggregated GPUs do prefill and decode
        cols.insert(5, AGG_COLUMN)
    if any("valid" in r for r in rows) and VALID_COLUMN not in cols:
        cols.append(VALID_COLUMN)
    cells = [[h for _, h, _ in cols]] + [[_shown(r, k, f) for k, _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)


def validity_lines(summary: dict[str, Any]) -> list[str]:
    """Under the table: why each invalid point is no result, each point's KV transfer, and
    the engines' KV capacity beside the plan's."""
    from inferx_slurm.results import kv_capacity, validity

    rows = summary.get("rows", [])
    out = [validity.invalid_line(r) for r in validity.invalid_rows(rows)]
    out += [line for r in rows if (line := validity.transfer_line(r))]
    caps = summary.get("kv_capacity") or []
    out += kv_capacity.lines(caps) + [f"warning: {w}" for w in kv_capacity.warnings(caps)]
    return out


def load_summary(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = JobPaths(p).summary
    if not p.exists():
        from inferx_slurm.errors import InferxError

        raise InferxError(f"no {JobPaths.SUMMARY} at {p}; pass a results dir written by `launch`")
    return read_json(p)


def served_line(summary: dict[str, Any]) -> str:
    served = summary.get("served") or {}
    if not served:
        return ""
    done = sum(int(r.get("completed") or 0) for r in summary.get("rows", []))
    workers = ", ".join(f"{k} {v}" for k, v in served.get("per_worker", {}).items())
    if "agg_requests" in served:
        return f"requests served by aggregated workers: {served['agg_requests']} (client completed {done}); per worker: {workers}"
    return (f"requests through prefill and decode: {served.get('through_prefill_and_decode')} "
            f"(client completed {done}); per worker: {workers}")


# Metrics a comparison reports, and whether bigger is better.
DELTA_METRICS = [
    ("tput_per_gpu", "tok/s/gpu", True),
    ("output_tput_per_gpu", "out/s/gpu", True),
    ("mean_ttft_ms", "TTFT ms", False),
    ("mean_tpot_ms", "TPOT ms", False),
    ("intvty", "tok/s/user", True),
]


# `results --compare --long`: every latency statistic but the spread, and energy per token.
LONG_DELTA_METRICS = DELTA_METRICS[:2] + [("intvty", "tok/s/user", True)] + [
    (k, h, False) for k, h, _ in LONG_COLUMNS if k.endswith("_ms") and not k.startswith("std_")
] + [("joules_per_output_token", "J/out tok", False)]


def compare(base: dict[str, Any], new: dict[str, Any], metrics: Optional[list[tuple[str, str, bool]]] = None) -> str:
    """Run-vs-run table: each (ISL, OSL, concurrency) both runs measured, new vs base in %."""
    metrics = metrics or DELTA_METRICS

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        return (int(r["isl"]), int(r["osl"]), int(r["concurrency"]))

    old = {key(r): r for r in base.get("rows", [])}
    head = ["ISL", "OSL", "conc"] + [h for _, h, _ in metrics]
    lines = [head]
    for r in sorted(new.get("rows", []), key=key):
        o = old.get(key(r))
        if o is None:
            continue
        cells = [str(x) for x in key(r)]
        if r.get("valid") is False or o.get("valid") is False:  # no number to compare with or against
            lines.append(cells + ["invalid"] * len(metrics))
            continue
        for k, _, higher_better in metrics:
            a, b = o.get(k), r.get(k)
            if not a or b is None:
                cells.append("-")
                continue
            pct = (b - a) / a * 100
            better = pct > 0 if higher_better else pct < 0
            cells.append(f"{pct:+.1f}%" + ("" if abs(pct) < 0.05 else (" ok" if better else " !!")))
        lines.append(cells)
    if len(lines) == 1:
        return "(no (ISL, OSL, concurrency) point in common)"
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(l, widths)) for l in lines)
