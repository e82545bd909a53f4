"""Energy of one benchmark point, per GPU and per role, as InferenceX reports it, from the GPU
samplers' logs (`gpumon`) and the point's serving window (from the client's per-request records).

Per GPU of the deployment's workers, over [benchmark_start_time_unix, benchmark_end_time_unix]:
- the GPU's own energy counter (`energy_j`), read at the window's start and end, each reading
  interpolated linearly between the samples either side of it. The counter integrates power
  inside the GPU, so only the two boundary readings carry sampling error;
- where a GPU has no counter (or it went backwards: the driver reloaded), its sampled power
  integrated instead: trapezoids over the samples, the power at the window's ends interpolated
  linearly (InferenceX's own method), and the point says `power_source: power_integral`.
The window must be covered for every GPU: a sample at or before its start, one at or after its
end, and no gap over 3 s between them (InferenceX's limit). The energies sum per role (prefill,
decode) and in total; power is valid only when every GPU of every worker has its energy and the
window and token counts are sound. Field names and units are those of InferenceX's agg files
(`total_gpu_energy_j`, `avg_power_w` per GPU, `joules_per_output_token`, ...); the reasons
reuse its codes where it has one. The arithmetic is pure; `point_power` reads the logs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:  # the arithmetic runs from this file alone (benchmarks/bench_energy.py loads it so)
    from inferx_slurm.planning.placement import Plan

MAX_GAP_S = 3.0
# Samples kept around the window: enough to find the ones that bracket it and to tell a gap.
MARGIN_S = 10 * MAX_GAP_S
SCHEMA_VERSION = 2  # InferenceX's power_metric_schema_version: unprefixed joules_per_* are the whole deployment's


class PowerSource(str, Enum):
    counter = "energy_counter"
    integral = "power_integral"


class PowerReason(str, Enum):
    invalid_window = "invalid_benchmark_window"
    invalid_queries = "invalid_successful_query_count"
    invalid_input_tokens = "invalid_input_token_count"
    invalid_output_tokens = "invalid_output_token_count"
    file_missing = "telemetry_file_missing"
    telemetry_unavailable = "gpu_telemetry_unavailable"
    gpu_missing = "expected_gpu_count_mismatch"
    counter_missing = "energy_counter_missing"
    counter_reset = "energy_counter_reset"
    power_missing = "no_usable_power_samples"
    too_few = "insufficient_power_samples"
    not_bracketed = "benchmark_window_not_bracketed"
    gap = "sampling_gap_exceeded"


Series = list[tuple[float, float]]  # (unix time, value), time ascending


@dataclass
class NodeLog:
    """One node's samples near the window, per GPU index."""

    source: Optional[str] = None  # nvml / amdsmi; None: the sampler could not read the GPUs
    reason: Optional[str] = None
    last_t: float = 0.0
    counters: dict[int, Series] = field(default_factory=dict)
    power: dict[int, Series] = field(default_factory=dict)


def parse_node_log(lines: Iterable[str], start: float, end: float) -> NodeLog:
    log = NodeLog()
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # the line being written when the log was read
        t = doc.get("t")
        if not isinstance(t, (int, float)):
            continue
        if "host" in doc:  # the sampler's first line
            log.source = doc.get("source") or ("nvml" if doc.get("nvml") else None)
            log.reason = doc.get("reason")
            continue
        log.last_t = max(log.last_t, t)
        if not isinstance(doc.get("gpus"), list) or not start - MARGIN_S <= t <= end + MARGIN_S:
            continue
        for g in doc["gpus"]:
            if isinstance(g.get("energy_j"), (int, float)):
                log.counters.setdefault(g["i"], []).append((t, float(g["energy_j"])))
            if isinstance(g.get("power_w"), (int, float)) and math.isfinite(g["power_w"]) and g["power_w"] >= 0:
                log.power.setdefault(g["i"], []).append((t, float(g["power_w"])))
    return log


def _bounds(series: Series, start: float, end: float) -> tuple[Optional[tuple[int, int]], Optional[PowerReason]]:
    """Indexes of the samples bracketing the window: the last at or before `start` and the first
    at or after `end`, or why there are none."""
    if len(series) < 2:
        return None, PowerReason.too_few
    if series[0][0] > start or series[-1][0] < end:
        return None, PowerReason.not_bracketed
    lo = max(i for i, (t, _) in enumerate(series) if t <= start)
    hi = min(i for i, (t, _) in enumerate(series) if t >= end)
    if any(series[k + 1][0] - series[k][0] > MAX_GAP_S for k in range(lo, hi)):
        return None, PowerReason.gap
    return (lo, hi), None


def _at(series: Series, t: float) -> float:
    """The value at `t`, linear between the samples either side (t is bracketed)."""
    for (t0, v0), (t1, v1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    raise ValueError(f"{t} is outside the samples")


def counter_joules(series: Series, start: float, end: float) -> tuple[Optional[float], Optional[PowerReason]]:
    """Energy over [start, end] from an energy counter's readings (J)."""
    if not series:
        return None, PowerReason.counter_missing
    bounds, why = _bounds(series, start, end)
    if bounds is None:
        return None, why
    lo, hi = bounds
    if any(b[1] < a[1] for a, b in zip(series[lo:hi + 1], series[lo + 1:hi + 1])):
        return None, PowerReason.counter_reset
    return _at(series, end) - _at(series, start), None


def power_joules(series: Series, start: float, end: float) -> tuple[Optional[float], Optional[PowerReason]]:
    """Energy over [start, end] from power samples (W): trapezoids, ends interpolated."""
    if not series:
        return None, PowerReason.power_missing
    bounds, why = _bounds(series, start, end)
    if bounds is None:
        return None, why
    pts = [(start, _at(series, start))] + [p for p in series if start < p[0] < end] + [(end, _at(series, end))]
    return sum((t1 - t0) * (v0 + v1) / 2.0 for (t0, v0), (t1, v1) in zip(pts, pts[1:])), None


@dataclass(frozen=True)
class GpuRef:
    role: str
    host: str
    index: int

    def __str__(self) -> str:
        return f"{self.role} GPU {self.index} on {self.host}"


def gpus_of(plan: Plan, hosts: list[str]) -> list[GpuRef]:
    """Every GPU a worker runs on. The sampler on a node sees that node's GPUs in the order the
    plan numbers them (the monitor step holds them all)."""
    return [GpuRef(w.role, hosts[s.node], g) for w in plan.workers for s in w.slices for g in s.gpus]


def _counts(start: Any, end: Any, completed: Any, tokens_in: Any, tokens_out: Any) -> list[PowerReason]:
    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    bad = []
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (start, end)) or end <= start:
        bad.append(PowerReason.invalid_window)
    for v, why in ((completed, PowerReason.invalid_queries), (tokens_in, PowerReason.invalid_input_tokens),
                   (tokens_out, PowerReason.invalid_output_tokens)):
        if not positive_int(v):
            bad.append(why)
    return bad


def point_energy(gpus: list[GpuRef], logs: dict[str, Optional[NodeLog]], *, start: Any, end: Any, completed: Any,
                 input_tokens: Any, output_tokens: Any) -> dict[str, Any]:
    """The energy fields of one point. Measured values only when power is valid."""
    reasons = _counts(start, end, completed, input_tokens, output_tokens)
    issues: list[str] = []
    per_gpu: list[dict[str, Any]] = []
    sources: set[PowerSource] = set()
    if PowerReason.invalid_window not in reasons:
        for g in gpus:
            joules, source, why = _gpu(g, logs.get(g.host), start, end, issues)
            per_gpu.append({"role": g.role, "host": g.host, "gpu": g.index, "energy_j": joules, "source": source})
            if joules is None:
                reasons += why
            else:
                sources.add(PowerSource(source))
    out: dict[str, Any] = {"power_valid": 0 if reasons else 1, "power_issues": issues, "gpu_energy": per_gpu}
    if reasons:
        out["power_invalid_reasons"] = sorted({r.value for r in reasons})
        return out
    duration = end - start
    total = sum(g["energy_j"] for g in per_gpu)
    out.update({
        "power_source": "+".join(s.value for s in PowerSource if s in sources),
        "total_gpu_energy_j": total,
        "avg_power_w": total / duration / len(per_gpu),
        "avg_total_gpu_power_w": total / duration,
        "joules_per_successful_query": total / completed,
        "joules_per_input_token": total / input_tokens,
        "joules_per_output_token": total / output_tokens,
        "joules_per_total_token": total / (input_tokens + output_tokens),
    })
    for role, per_token, tokens in (("prefill", "input", input_tokens), ("decode", "output", output_tokens)):
        mine = [g["energy_j"] for g in per_gpu if g["role"] == role]
        if mine:
            out[f"{role}_gpu_energy_j"] = sum(mine)
            out[f"{role}_avg_power_w"] = sum(mine) / duration / len(mine)
            out[f"{role}_joules_per_{per_token}_token"] = sum(mine) / tokens
    return out


def _gpu(g: GpuRef, log: Optional[NodeLog], start: float, end: float,
         issues: list[str]) -> tuple[Optional[float], Optional[str], list[PowerReason]]:
    if log is None:
        issues.append(f"{g}: no GPU sampler log")
        return None, None, [PowerReason.file_missing]
    if log.source is None and not log.counters and not log.power:
        issues.append(f"{g}: the sampler could not read the GPUs ({log.reason or 'no reason given'})")
        return None, None, [PowerReason.telemetry_unavailable]
    if g.index not in log.counters and g.index not in log.power:
        issues.append(f"{g}: not in the sampler's readings")
        return None, None, [PowerReason.gpu_missing]
    joules, counter_why = counter_joules(log.counters.get(g.index, []), start, end)
    if joules is not None:
        return joules, PowerSource.counter.value, []
    joules, power_why = power_joules(log.power.get(g.index, []), start, end)
    if joules is not None:
        issues.append(f"{g}: {counter_why.value if counter_why else 'no counter'}; sampled power integrated")
        return joules, PowerSource.integral.value, []
    why = [r for r in (counter_why, power_why) if r is not None]
    issues.append(f"{g}: " + ", ".join(r.value for r in why))
    return None, None, why


# --- the shell: reading the samplers' logs --------------------------------------------------------


def read_logs(log_dir: Path, hosts: list[str], start: float, end: float) -> dict[str, Optional[NodeLog]]:
    out: dict[str, Optional[NodeLog]] = {}
    for h in hosts:
        try:
            with open(log_dir / f"gpu-{h}.jsonl") as f:
                out[h] = parse_node_log(f, start, end)
        except OSError:
            out[h] = None
    return out


def point_power(log_dir: Path, hosts: list[str], plan: Plan, row: dict[str, Any], *, wait_s: float = 0.0) -> dict[str, Any]:
    """The energy fields of one results row. Waits up to `wait_s` for every sampler to have
    written a sample after the window's end, so a point that just finished is bracketed."""
    gpus = gpus_of(plan, hosts)
    start, end = row.get("benchmark_start_time_unix"), row.get("benchmark_end_time_unix")
    window = (start, end) if isinstance(start, (int, float)) and isinstance(end, (int, float)) else (0.0, 0.0)
    used = sorted({g.host for g in gpus})
    deadline = time.time() + wait_s
    while True:
        logs = read_logs(log_dir, used, *window)
        waiting = [h for h, log in logs.items() if log is not None and log.source is not None and log.last_t < window[1]]
        if not waiting or time.time() >= deadline:
            break
        time.sleep(0.25)
    return point_energy(gpus, logs, start=start, end=end, completed=row.get("completed"),
                        input_tokens=row.get("total_input_tokens"), output_tokens=row.get("total_output_tokens"))
