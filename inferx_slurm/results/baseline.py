"""The baseline gate: compare a run with an earlier one, point by point, and fail on a drop
larger than a per-metric threshold.

A baseline is a results dir (or its summary.json) written by `launch` / `ci`, or the
InferenceX `agg_*.json` files an earlier CI run uploaded (a dir of them, or one file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferx_slurm.benchmark.records import LATENCY_KEYS
from inferx_slurm.errors import RecipeError
from inferx_slurm.job.paths import JobPaths

# metric -> (higher is better, allowed worsening in %)
DEFAULT_THRESHOLDS: dict[str, tuple[bool, float]] = {
    "tput_per_gpu": (True, 10.0),
    "output_tput_per_gpu": (True, 10.0),
    "intvty": (True, 10.0),
    "median_ttft_ms": (False, 25.0),
}
KNOWN_METRICS: dict[str, bool] = {
    "tput_per_gpu": True, "output_tput_per_gpu": True, "input_tput_per_gpu": True, "intvty": True,
    # every latency statistic (lower is better) but the spread, which is no quality of its own
    **{k: False for k in LATENCY_KEYS if not k.startswith("std_")},
    "joules_per_output_token": False, "joules_per_total_token": False,
}

Key = tuple[int, int, int]


def parse_thresholds(items: list[str]) -> dict[str, tuple[bool, float]]:
    """--threshold METRIC=PCT (repeatable) over the defaults; PCT 'off' drops a metric from the gate."""
    out = dict(DEFAULT_THRESHOLDS)
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in KNOWN_METRICS:
            raise RecipeError("--threshold", item, f"expected METRIC=PERCENT with METRIC one of {', '.join(KNOWN_METRICS)}")
        if raw.strip().lower() == "off":
            out.pop(name, None)
            continue
        try:
            pct = float(raw)
        except ValueError:
            raise RecipeError("--threshold", item, "expected a percentage like 10 (or off)") from None
        if pct < 0:
            raise RecipeError("--threshold", item, "expected a percentage >= 0")
        out[name] = (KNOWN_METRICS[name], pct)
    return out


def _from_agg(doc: dict[str, Any]) -> dict[str, Any]:
    """A results row from an agg file: its latencies (seconds there) back in milliseconds."""
    row = {
        "isl": doc["isl"], "osl": doc["osl"], "concurrency": doc["conc"],
        "tput_per_gpu": doc.get("tput_per_gpu"), "output_tput_per_gpu": doc.get("output_tput_per_gpu"),
        "input_tput_per_gpu": doc.get("input_tput_per_gpu"), "intvty": doc.get("mean_intvty", doc.get("intvty")),
        "joules_per_output_token": doc.get("joules_per_output_token"), "joules_per_total_token": doc.get("joules_per_total_token"),
    }
    for key in LATENCY_KEYS:
        v = doc.get(key[: -len("_ms")])
        row[key] = None if v is None else float(v) * 1000.0
    return row


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        if p.is_dir() and JobPaths(p).summary.is_file():
            return json.loads(JobPaths(p).summary.read_text()).get("rows", [])
        if p.is_file() and p.name.startswith("agg_"):
            return [_from_agg(json.loads(p.read_text()))]
        if p.is_file():
            return json.loads(p.read_text()).get("rows", [])
        if p.is_dir():
            aggs = sorted(p.glob("agg_*.json"))
            if aggs:
                return [_from_agg(json.loads(a.read_text())) for a in aggs]
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise RecipeError("--baseline", str(path), f"cannot read it as results ({e})") from None
    raise RecipeError("--baseline", str(path), f"expected a results dir (with {JobPaths.SUMMARY}), a {JobPaths.SUMMARY}, "
                      "or InferenceX agg_*.json files from an earlier run")


def _key(r: dict[str, Any]) -> Key:
    return (int(r["isl"]), int(r["osl"]), int(r["concurrency"]))


def gate(base_rows: list[dict[str, Any]], new_rows: list[dict[str, Any]],
         thresholds: dict[str, tuple[bool, float]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One check per (point both runs measured, metric); and warnings for points only one has."""
    base = {_key(r): r for r in base_rows}
    checks, warnings = [], []
    for r in sorted(new_rows, key=_key):
        k = _key(r)
        b = base.get(k)
        if b is None:
            warnings.append(f"ISL {k[0]} OSL {k[1]} conc {k[2]}: not in the baseline; not gated")
            continue
        for metric, (higher_better, allowed) in thresholds.items():
            old, new = b.get(metric), r.get(metric)
            if not old or new is None:
                continue
            change = (float(new) - float(old)) / float(old) * 100.0
            worse = -change if higher_better else change
            checks.append({"isl": k[0], "osl": k[1], "concurrency": k[2], "metric": metric, "base": float(old), "new": float(new),
                           "change_pct": change, "worse_allowed_pct": allowed, "regressed": worse > allowed})
    missing = sorted(set(base) - {_key(r) for r in new_rows})
    warnings += [f"ISL {k[0]} OSL {k[1]} conc {k[2]}: in the baseline but not measured in this run" for k in missing]
    return checks, warnings
