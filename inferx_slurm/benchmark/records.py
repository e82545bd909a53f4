"""Per-request results: the client's record of every request (aiperf's `profile_export.jsonl`)
turned into the statistics, names and units of vLLM's benchmark_serving, which InferenceX's
result pipeline reads and its tables show.

Per request (vLLM's definitions; aiperf measures the same instants):
- TTFT: request start to the first content chunk (aiperf `time_to_first_token`);
- E2EL: request start to the last content chunk (aiperf `request_latency`);
- TPOT: (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token;
- ITL: each gap between consecutive content chunks, pooled over all requests, so a request
  with more chunks weighs more (aiperf `inter_chunk_latency`).
Statistics are numpy's defaults, without numpy: mean, median, population standard deviation
(ddof 0) and percentiles by linear interpolation; an empty list gives 0, as vLLM's
`np.mean(x or 0)` does. Failed or cancelled requests count in no latency and no token total;
warm-up requests count in nothing. Pure: parsing and arithmetic, the file read is `read_records`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

RECORDS_EXPORT = "profile_export.jsonl"
# InferenceX's client runs with --percentile-metrics ttft,tpot,itl,e2el and the vendored
# default --metric-percentiles 90,99,99.9.
METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (90.0, 99.0, 99.9)


def pct_word(p: float) -> str:
    """benchmark_serving's spelling: 90 -> "p90", 99.9 -> "p99.9"."""
    return "p" + (str(int(p)) if int(p) == p else str(p))


STATS = ("mean", "median", "std", *(pct_word(p) for p in PERCENTILES))
# Every latency key of a result, in benchmark_serving's order; all in milliseconds.
LATENCY_KEYS = tuple(f"{s}_{m}_ms" for m in METRICS for s in STATS)


def percentile(ordered: list[float], p: float) -> float:
    """numpy.percentile(x, p) with its default method "linear", over already sorted values,
    computed as numpy does (index (n-1)*p/100, lerp from the nearer end) so the results agree
    to the last bit."""
    n = len(ordered)
    if n == 0:
        return 0.0
    index = (n - 1) * (p / 100.0)
    if index >= n - 1:
        return float(ordered[-1])
    lo = math.floor(index)
    a, b, t = ordered[lo], ordered[lo + 1], index - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def median(ordered: list[float]) -> float:
    n = len(ordered)
    if n == 0:
        return 0.0
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def stats(values: Iterable[float]) -> dict[str, float]:
    """mean, median, std (population), p90, p99, p99.9 of `values`; all 0 for none."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    mean = sum(xs) / n if n else 0.0
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n) if n else 0.0
    out = {"mean": mean, "median": median(xs), "std": std}
    out.update({pct_word(p): percentile(xs, p) for p in PERCENTILES})
    return out


@dataclass(frozen=True)
class Request:
    """One measured request, as the client recorded it."""

    start_ns: int  # wall clock (time.time_ns) when the request was sent
    end_ns: int  # wall clock of its last response, or of its error
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: float = 0.0
    e2el_ms: float = 0.0
    itl_ms: tuple[float, ...] = ()

    @property
    def tpot_ms(self) -> Optional[float]:
        if self.output_tokens <= 1:
            return None
        return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)


def _value(metrics: dict[str, Any], key: str) -> Any:
    entry = metrics.get(key)
    return entry.get("value") if isinstance(entry, dict) else None


def parse_record(doc: dict[str, Any]) -> Optional[Request]:
    """One line of aiperf's record export; None for a warm-up request or a line that is no
    request record."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or "request_start_ns" not in meta:
        return None
    if (meta.get("phase_kind") or meta.get("benchmark_phase")) == "warmup":
        return None
    metrics = doc.get("metrics") or {}
    ttft, e2el = _value(metrics, "time_to_first_token"), _value(metrics, "request_latency")
    ok = not doc.get("error") and not meta.get("was_cancelled") and ttft is not None and e2el is not None
    start, end = int(meta["request_start_ns"]), int(meta.get("request_end_ns") or meta["request_start_ns"])
    if not ok:
        return Request(start_ns=start, end_ns=end, ok=False)
    itl = _value(metrics, "inter_chunk_latency")
    return Request(
        start_ns=start, end_ns=end, ok=True,
        input_tokens=int(_value(metrics, "input_sequence_length") or 0),
        output_tokens=int(_value(metrics, "output_sequence_length") or 0),
        ttft_ms=float(ttft), e2el_ms=float(e2el),
        itl_ms=tuple(float(x) for x in itl) if isinstance(itl, list) else (),
    )


def read_records(path: Path) -> Optional[list[Request]]:
    """The measured requests of one point; None when the client wrote no record export."""
    try:
        text = path.read_text()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        try:
            req = parse_record(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a killed client
        if req is not None:
            out.append(req)
    return out


def point_metrics(requests: list[Request], *, expected: int) -> dict[str, Any]:
    """The result set of one point, in benchmark_serving's names and units (latencies in ms,
    times and durations in s, throughputs per second), plus the measured mean sequence lengths
    and the success rate. `expected`: requests the point sent; any without a record failed."""
    if not requests:
        return {"completed": 0, "failed": expected, "success_rate": 0.0}
    good = [r for r in requests if r.ok]
    start_ns = min(r.start_ns for r in requests)
    end_ns = max(r.end_ns for r in requests)
    # Like aiperf's benchmark_duration: first request sent to last response received.
    duration = (end_ns - start_ns) / 1e9
    total_in = sum(r.input_tokens for r in good)
    total_out = sum(r.output_tokens for r in good)
    failed = len(requests) - len(good) + max(0, expected - len(requests))
    out: dict[str, Any] = {
        "benchmark_start_time_unix": start_ns / 1e9,
        "benchmark_end_time_unix": end_ns / 1e9,
        "duration": duration,
        "completed": len(good),
        "failed": failed,
        "success_rate": len(good) / (len(good) + failed) if good or failed else 0.0,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "measured_isl": total_in / len(good) if good else 0.0,
        "measured_osl": total_out / len(good) if good else 0.0,
        "request_throughput": len(good) / duration if duration > 0 else 0.0,
        "input_throughput": total_in / duration if duration > 0 else 0.0,
        "output_throughput": total_out / duration if duration > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration > 0 else 0.0,
        "input_lens": [r.input_tokens for r in good],
        "output_lens": [r.output_tokens for r in good],
    }
    per_metric = {
        "ttft": [r.ttft_ms for r in good],
        "tpot": [t for r in good if (t := r.tpot_ms) is not None],
        "itl": [x for r in good for x in r.itl_ms],
        "e2el": [r.e2el_ms for r in good],
    }
    for metric, values in per_metric.items():
        for stat, v in stats(values).items():
            out[f"{stat}_{metric}_ms"] = v
    return out
