"""SGLang: `dynamo.sglang` workers (or `sglang.launch_server` as the engine's own server), their
flags, memory defaults and metrics."""

from __future__ import annotations

from typing import Optional

from inferx_slurm.engines.common import (
    LEADER_ADDR,
    arg_number,
    block_size,
    http_port,
    cuda_graph_sizes,
    kv_dtype_bytes,
    own_server,
    scenario_len,
    worker_port,
)
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics
from inferx_slurm.planning.memory import EngineMemory
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.planning.ports import PortVar
from inferx_slurm.recipe.sections import ArgValue
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import ParallelKind, Parallelism

MODULE = "dynamo.sglang"
# Real engines load hundreds of GB and capture CUDA graphs before they register.
STARTUP_TIMEOUT_S = 1800.0
# What the worker's preflight requires (keys of runtime/identity_probe.py's NEEDS).
PREFLIGHT_NEEDS = ("sglang",)
# Disaggregated prefill and decode move KV over NIXL (disaggregation-transfer-backend nixl).
KV_OVER_NIXL = True
FOLLOWER_ARGV: Optional[list[str]] = None

# SGLang sizes --mem-fraction-static from GPU memory and TP when unset (0.8-0.88 on large
# GPUs); the middle of that range is assumed. Its default chunked prefill is 8192 tokens.
MEM_FRACTION = 0.85
CUDA_GRAPH_MAX_BS = 256
CHUNKED_PREFILL_SIZE = 8192
# Running requests when --max-running-requests is unset: assumed as many as vLLM's max-num-seqs.
MAX_RUNNING_REQUESTS = 1024

PROGRESS_METRICS = ("sglang:generation_tokens_total",)
STARTED_METRICS = ("sglang:prompt_tokens_total",)
DONE_METRICS: tuple[str, ...] = ()
SPEC_ACCEPTED: tuple[str, ...] = ()
SPEC_DRAFTS: tuple[str, ...] = ()
# No KV-transfer counters are known for SGLang's disaggregation: transfers are "not measured".
KV_TRANSFER: Optional[KVTransferMetrics] = None
# The KV pool's size in tokens, as a gauge and in the scheduler's start-up line.
KV_CAPACITY = KVCapacityMetric(metric="sglang:max_total_num_tokens", log_pattern=r"max_total_num_tokens=(\d+)")


def server_argv(recipe: Recipe) -> Optional[list[str]]:
    return ["-m", "sglang.launch_server"]


def derived_args(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    # SGLang shards attention DP inside one TP group: DEPn = tp n, dp n, dp-attention.
    d: dict[str, ArgValue] = {"model-path": recipe.model.path, "served-model-name": recipe.model.name}
    if own_server(recipe):
        d.update({"host": "0.0.0.0", "port": http_port(recipe)})
    if w.role != "agg":
        d.update({"disaggregation-mode": w.role, "disaggregation-transfer-backend": "nixl"})
    d["tp-size"] = par.size
    if par.ep:
        d["ep-size"] = par.size
    if par.kind is ParallelKind.DEP:
        d.update({"dp-size": par.dp, "enable-dp-attention": True})
    if w.multi_node:
        d.update({"nnodes": len(w.nodes), "node-rank": rank, "dist-init-addr": f"{LEADER_ADDR}:{worker_port(w, PortVar.rendezvous)}"})
    d.update({"page-size": block_size(recipe), "context-length": scenario_len(recipe)})
    spec = recipe.speculative
    if spec:
        # SGLang's EAGLE path serves EAGLE, EAGLE3 and a model's own MTP head (no draft path then).
        d.update({"speculative-algorithm": "EAGLE3" if spec.method.value == "eagle3" else
                  "NGRAM" if spec.method.value == "ngram" else "EAGLE",
                  "speculative-num-steps": spec.num_speculative_tokens,
                  "speculative-eagle-topk": 1,
                  "speculative-num-draft-tokens": spec.num_speculative_tokens + 1})
        if spec.draft_model:
            d["speculative-draft-model-path"] = spec.draft_model
    return d


def engine_memory(recipe: Recipe, args: dict[str, ArgValue]) -> Optional[EngineMemory]:
    max_bs = int(arg_number(args, "cuda-graph-max-bs", CUDA_GRAPH_MAX_BS))
    sizes = [] if args.get("disable-cuda-graph") else cuda_graph_sizes(max_bs)
    return EngineMemory(backend="sglang", fraction=arg_number(args, "mem-fraction-static", MEM_FRACTION),
                        fraction_flag="mem-fraction-static", fraction_of="static", capture_sizes=sizes,
                        max_batched_tokens=int(arg_number(args, "chunked-prefill-size", CHUNKED_PREFILL_SIZE)),
                        max_seqs=int(arg_number(args, "max-running-requests", MAX_RUNNING_REQUESTS)),
                        kv_dtype_bytes=kv_dtype_bytes(args), block_size=block_size(recipe))
