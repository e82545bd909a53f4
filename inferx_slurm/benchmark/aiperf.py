"""The benchmark client: aiperf command lines per (scenario, concurrency) and the parser that
turns its export into rows of the results table."""

from __future__ import annotations

from typing import Any, Optional

from inferx_slurm.benchmark.records import Request, point_metrics
from inferx_slurm.engines.common import flags
from inferx_slurm.recipe.sections import BenchmarkSpec, Scenario
from inferx_slurm.recipe.schema import Recipe

AIPERF_EXPORT = "profile_export_aiperf.json"


def aiperf_argv(
    recipe: Recipe, scenario: Scenario, concurrency: int, *, url: str, artifact_dir: str, tokenizer: str
) -> list[str]:
    b: BenchmarkSpec = recipe.benchmark
    argv = [
        b.client_command, "profile",
        "--model", recipe.model.name,
        "--url", url,
        "--endpoint-type", "chat",
        "--streaming",
        "--tokenizer", tokenizer,
        "--synthetic-input-tokens-mean", str(scenario.isl),
        "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(scenario.osl),
        "--output-tokens-stddev", "0",
        # Exact output lengths: without these the engine stops at EOS and OSL drifts per request.
        "--extra-inputs", "ignore_eos:true",
        "--extra-inputs", f"min_tokens:{scenario.osl}",
        "--concurrency", str(concurrency),
        "--request-count", str(b.requests_for(concurrency)),
        # Count tokens as the server did: re-tokenizing streamed text over-counts output tokens.
        "--use-server-token-count",
        "--no-gpu-telemetry",
        "--random-seed", "0",
        "--artifact-dir", artifact_dir,
        "--ui-type", "none",
    ]
    if b.warmup_requests:
        argv += ["--warmup-request-count", str(b.warmup_requests)]
    return argv + flags(b.args)


def asks_ignore_eos(argv: list[str]) -> bool:
    """Whether the client asks the engine to ignore EOS (the last such input wins)."""
    asked = [v.split(":", 1)[1].strip().lower() for k, v in zip(argv, argv[1:]) if k == "--extra-inputs" and v.startswith("ignore_eos:")]
    return bool(asked) and asked[-1] == "true"


def _stat(export: dict[str, Any], key: str, field: str = "avg") -> Optional[float]:
    entry = export.get(key)
    if isinstance(entry, dict):
        v = entry.get(field)
        return float(v) if v is not None else None
    return None


def summarize(
    export: dict[str, Any], *, isl: int, osl: int, concurrency: int, prefill_gpus: int, decode_gpus: int,
    expected_requests: int, agg_gpus: int = 0,
) -> dict[str, Any]:
    """One results row in the field names the InferenceX results pipeline uses.

    Throughput per GPU divides by every GPU of the deployment (prefill + decode, or the
    aggregated workers'); output throughput per GPU by decode GPUs and input throughput per
    GPU by prefill GPUs, or both by the aggregated GPUs, which do both.
    """
    out_tput = _stat(export, "output_token_throughput") or 0.0
    in_tput = _stat(export, "input_token_throughput")
    if in_tput is None:
        # Older aiperf exports lack it: requests/s x mean input length is the same quantity.
        in_tput = (_stat(export, "request_throughput") or 0.0) * (_stat(export, "input_sequence_length") or float(isl))
    total = _stat(export, "total_token_throughput") or (out_tput + in_tput)
    # aiperf: request_count = successful requests, error_request_count = failed ones (absent
    # when none), completed_request_count = both.
    completed = int(_stat(export, "request_count") or 0)
    errors = int(_stat(export, "error_request_count") or 0)
    # aiperf's inter-token latency is per request (latency - TTFT) / (output tokens - 1): TPOT.
    tpot = _stat(export, "inter_token_latency")
    return {
        "isl": isl,
        "osl": osl,
        "concurrency": concurrency,
        "num_prefill_gpu": prefill_gpus,
        "num_decode_gpu": decode_gpus,
        **({"num_agg_gpu": agg_gpus} if agg_gpus else {}),
        **per_gpu(total, out_tput, in_tput, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus, agg_gpus=agg_gpus),
        "mean_ttft_ms": _stat(export, "time_to_first_token"),
        "median_ttft_ms": _stat(export, "time_to_first_token", "p50"),
        "p99_ttft_ms": _stat(export, "time_to_first_token", "p99"),
        "mean_tpot_ms": tpot,
        "median_tpot_ms": _stat(export, "inter_token_latency", "p50"),
        "mean_itl_ms": tpot,
        "intvty": (1000.0 / tpot) if tpot else None,
        "completed": completed,
        # Requests the client never got an answer for count as failed too.
        "failed": errors + max(0, expected_requests - completed - errors),
    }


def per_gpu(total: float, out_tput: float, in_tput: float, *, prefill_gpus: int, decode_gpus: int, agg_gpus: int) -> dict[str, float]:
    return {
        "total_token_throughput": total,
        "output_throughput": out_tput,
        "tput_per_gpu": total / (prefill_gpus + decode_gpus + agg_gpus),
        "output_tput_per_gpu": out_tput / (decode_gpus or agg_gpus),
        "input_tput_per_gpu": in_tput / (prefill_gpus or agg_gpus),
    }


def point_row(
    export: dict[str, Any], records: Optional[list[Request]], *, isl: int, osl: int, concurrency: int, prefill_gpus: int,
    decode_gpus: int, expected_requests: int, agg_gpus: int = 0,
) -> dict[str, Any]:
    """One results row: aiperf's summary export, overlaid with everything the per-request
    records give exactly (the full latency set, the window, token totals, throughputs over the
    window, measured sequence lengths). Without records (an older aiperf, or a client that was
    told not to write them) the row is the summary's alone and says so."""
    row = summarize(export, isl=isl, osl=osl, concurrency=concurrency, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus,
                    expected_requests=expected_requests, agg_gpus=agg_gpus)
    if not records:
        row["latency_source"] = "aiperf summary"
        return row
    m = point_metrics(records, expected=expected_requests)
    row.update(m)
    row.update(per_gpu(m["total_token_throughput"], m["output_throughput"], m["input_throughput"],
                       prefill_gpus=prefill_gpus, decode_gpus=decode_gpus, agg_gpus=agg_gpus))
    tpot = m["mean_tpot_ms"]
    row["intvty"] = 1000.0 / tpot if tpot else None
    row["latency_source"] = "per-request records"
    return row


def profiling_window(export: dict[str, Any]) -> tuple[float, float]:
    """Unix start and end of the measured phase (aiperf writes local ISO times), without the
    client's own start-up, so GPU metrics average over the load alone."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(export["start_time"]).timestamp(), datetime.fromisoformat(export["end_time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0, float("inf")
