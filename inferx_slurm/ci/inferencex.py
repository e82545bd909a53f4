"""Result files in InferenceX's format, names and units, so its multi-node workflow's later
steps take them as they take srt-slurm's. Pure: no I/O.

- the raw file, `${RESULT_FILENAME}_isl_I_osl_O_concC_gpus_G_ctx_P_gen_D.json` (G = P + D GPUs;
  aggregated deployments have no `_ctx_`/`_gen_`, which InferenceX reads as P = G, D = 0):
  vLLM benchmark_serving's result keys (latencies in ms, durations in s, throughputs per s) plus
  InferenceX's `benchmark_start_time_unix` / `benchmark_end_time_unix`, our extras after them;
- the agg file, `agg_` + the same name: what InferenceX's `utils/process_result.py` makes of
  the raw file (latencies in s, `*_intvty` = 1000 / TPOT ms in tok/s/user, throughput per GPU),
  with labels never null and the power block of its `aggregate_power*`;
- `LOGS/isl_I_osl_O/results_concurrency_C_gpus_G_ctx_P_gen_D.json`: the raw file again where
  srt-slurm leaves it, the layout the workflow's power-audit upload globs (`LOGS/*/results_*.json`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from inferx_slurm.benchmark.records import LATENCY_KEYS
from inferx_slurm.recipe.topology import ParallelKind, Topology

LOGS_DIR = "LOGS"
LOGS_ARCHIVE = "multinode_server_logs.tar.gz"
POWER_SCHEMA_VERSION = 2
# Measured power fields (present only when power is valid), in InferenceX's names.
POWER_KEYS = (
    "avg_power_w", "avg_total_gpu_power_w", "total_gpu_energy_j", "joules_per_successful_query",
    "joules_per_input_token", "joules_per_output_token", "joules_per_total_token",
    "prefill_gpu_energy_j", "prefill_avg_power_w", "prefill_joules_per_input_token",
    "decode_gpu_energy_j", "decode_avg_power_w", "decode_joules_per_output_token",
)
# benchmark_serving's keys before the latency block, in its order.
RAW_HEAD = (
    "date", "backend", "model_id", "tokenizer_id", "best_of", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "benchmark_start_time_unix", "benchmark_end_time_unix", "completed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "output_throughput", "total_token_throughput",
    "input_lens", "output_lens",
)
# Labels InferenceX's compare/collect scripts index and lower-case: never null.
LABEL_KEYS = ("hw", "image", "model", "infmax_model_prefix", "framework", "precision", "spec_decoding", "recipe_fingerprint")


@dataclass(frozen=True)
class ResultLabels:
    hw: str
    model: str
    image: str
    infmax_model_prefix: str
    framework: str
    precision: str
    spec_decoding: str
    recipe_fingerprint: str
    # role -> {"pp", "dcp", "pcp"}; a role not here has 1 for each
    parallel: dict[str, dict[str, int]] = field(default_factory=dict)
    exp_name: Optional[str] = None


def point_name(prefix: str, row: dict[str, Any], topo: Topology) -> str:
    """The raw file's name: InferenceX's "Process result" step reads G, P and D from the last
    `_gpus_`, `_ctx_` and `_gen_` in it (prefill and decode GPU counts)."""
    p, d = int(row["num_prefill_gpu"]), int(row["num_decode_gpu"])
    gpus = p + d + int(row.get("num_agg_gpu") or 0)
    head = f"{prefix}_isl_{row['isl']}_osl_{row['osl']}_conc{row['concurrency']}_gpus_{gpus}"
    return f"{head}.json" if topo.aggregated else f"{head}_ctx_{p}_gen_{d}.json"


def logs_name(row: dict[str, Any], topo: Topology) -> str:
    """Where srt-slurm leaves the same result under LOGS/: one dir per scenario."""
    name = point_name("", row, topo)
    conc_and_gpus = name[name.index("_conc") + len("_conc"):]
    return f"isl_{row['isl']}_osl_{row['osl']}/results_concurrency_{conc_and_gpus}"


def _power(row: dict[str, Any], *, rounded: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"power_metric_schema_version": POWER_SCHEMA_VERSION, "power_valid": int(row.get("power_valid") or 0)}
    if not out["power_valid"]:
        out["power_invalid_reasons"] = list(row.get("power_invalid_reasons") or ["telemetry_file_missing"])
        return out
    out["power_source"] = row.get("power_source")
    for k in POWER_KEYS:
        if row.get(k) is not None:
            # InferenceX rounds watts and joules to 3 decimals, the rest to 6.
            out[k] = round(float(row[k]), 3 if k.endswith(("_w", "_j")) else 6) if rounded else row[k]
    return out


def raw_result(row: dict[str, Any], *, model: str, tokenizer: Optional[str] = None, job_id: Optional[str]) -> dict[str, Any]:
    """The per-point client result in benchmark_serving's names and units."""
    start = row.get("benchmark_start_time_unix")
    values: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(start)) if start else None,
        "backend": "openai-chat",  # aiperf's --endpoint-type chat --streaming
        "model_id": model,
        "tokenizer_id": tokenizer or model,
        "best_of": 1,
        "num_prompts": int(row.get("completed") or 0) + int(row.get("failed") or 0),
        "request_rate": "inf",  # a closed loop: the next request as soon as one finishes
        "burstiness": 1.0,
        "max_concurrency": row["concurrency"],
        **{k: row.get(k) for k in RAW_HEAD[9:]},
    }
    doc = {k: values[k] for k in RAW_HEAD if values.get(k) is not None}
    for k in LATENCY_KEYS:
        v = row.get(k)
        # InferenceX divides 1000 by every *tpot* value (its interactivity): a TPOT statistic of
        # 0 (every token of most requests in one chunk) would stop its processing. Left out, it
        # shows as N/A there; summary.json keeps it.
        if v is not None and not ("tpot" in k and float(v) == 0.0):
            doc[k] = v
    doc.update({k: row[k] for k in ("failed", "success_rate", "measured_isl", "measured_osl") if row.get(k) is not None})
    doc.update(requested_isl=row["isl"], requested_osl=row["osl"])
    doc.update(_power(row, rounded=False))
    if job_id:
        doc["slurm_job_id"] = job_id
    return doc


def _role_fields(topo: Topology, role: str, pre: str, sizes: dict[str, int]) -> dict[str, Any]:
    r = topo.role(role)
    par = r.parallel
    # InferenceX writes DEP8 as tp 8, ep 8, dp-attention true: "tp" is the worker's width.
    return {
        f"{pre}tp": par.size,
        f"{pre}pp": sizes.get("pp", 1),
        f"{pre}dcp_size": sizes.get("dcp", 1),
        f"{pre}pcp_size": sizes.get("pcp", 1),
        f"{pre}ep": par.size if par.kind in (ParallelKind.TEP, ParallelKind.DEP) else 1,
        f"{pre}dp_attention": "true" if par.kind is ParallelKind.DEP else "false",
        f"{pre}num_workers": r.workers,
    }


def _no_decode() -> dict[str, Any]:
    # What InferenceX's processor writes for a deployment without decode GPUs.
    return {"decode_tp": 0, "decode_pp": 1, "decode_dcp_size": 1, "decode_pcp_size": 1, "decode_ep": 0,
            "decode_dp_attention": "false", "decode_num_workers": 0}


def agg_result(row: dict[str, Any], raw: dict[str, Any], *, topo: Topology, total_nodes: int,
               labels: ResultLabels) -> dict[str, Any]:
    """The aggregated per-point record (`agg_*.json`) as InferenceX's processor makes it from
    `raw`: labels, layout, throughput per GPU, the latency block in seconds, the power block."""
    # InferenceX has no single-node disaggregation: a disaggregated deployment is multi-node to it.
    multinode = not topo.aggregated or total_nodes > 1
    doc: dict[str, Any] = {
        "hw": labels.hw, "conc": int(raw["max_concurrency"]), "image": labels.image, "model": labels.model,
        "infmax_model_prefix": labels.infmax_model_prefix, "framework": labels.framework, "precision": labels.precision,
        "spec_decoding": labels.spec_decoding, "disagg": not topo.aggregated, "recipe_fingerprint": labels.recipe_fingerprint,
        "isl": int(row["isl"]), "osl": int(row["osl"]), "is_multinode": multinode,
    }
    if topo.aggregated and not multinode:
        doc.update(_role_fields(topo, "agg", "", labels.parallel.get("agg", {})))
    elif topo.aggregated:
        doc.update(_role_fields(topo, "agg", "prefill_", labels.parallel.get("agg", {})))
        doc.update(_no_decode())
    else:
        for role in ("prefill", "decode"):
            doc.update(_role_fields(topo, role, f"{role}_", labels.parallel.get(role, {})))
    if multinode:
        doc["num_prefill_gpu"] = int(row["num_prefill_gpu"]) or int(row.get("num_agg_gpu") or 0)
        doc["num_decode_gpu"] = int(row["num_decode_gpu"])
    else:
        # Aggregated GPUs are neither prefill nor decode GPUs; num_gpus counts them.
        doc.update(num_prefill_gpu=0, num_decode_gpu=0, num_gpus=int(row.get("num_agg_gpu") or 0))
    doc.update({k: row.get(k) for k in ("tput_per_gpu", "output_tput_per_gpu", "input_tput_per_gpu")})
    # As process_result.py: every *ms key in seconds, and 1000 / every *tpot* key beside it.
    for k, v in raw.items():
        if k.endswith("ms"):
            doc[k.replace("_ms", "")] = float(v) / 1000.0
        if "tpot" in k:
            doc[k.replace("_ms", "").replace("tpot", "intvty")] = 1000.0 / float(v)
    doc.update(_power(row, rounded=True))
    doc.update({k: row[k] for k in ("measured_isl", "measured_osl", "success_rate") if row.get(k) is not None})
    if row.get("acceptance_length") is not None:
        doc["spec_acceptance_length"] = row["acceptance_length"]
    if labels.exp_name:
        doc["exp_name"] = labels.exp_name
    return doc
