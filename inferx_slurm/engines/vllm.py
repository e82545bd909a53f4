"""vLLM: `dynamo.vllm` workers (or `vllm serve` as the engine's own server), their flags, memory
defaults and metrics."""

from __future__ import annotations

from typing import Any, Optional

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
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics, Series
from inferx_slurm.planning.memory import EngineMemory
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.planning.ports import PortVar
from inferx_slurm.recipe.sections import ArgValue
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import ParallelKind, Parallelism

MODULE = "dynamo.vllm"
# Real engines load hundreds of GB and capture CUDA graphs before they register.
STARTUP_TIMEOUT_S = 1800.0
# What the worker's preflight requires (keys of runtime/identity_probe.py's NEEDS).
PREFLIGHT_NEEDS = ("vllm",)
# Disaggregated prefill and decode move KV over NIXL (NixlConnector).
KV_OVER_NIXL = True
# Other nodes of a worker run the engine too (headless ranks).
FOLLOWER_ARGV: Optional[list[str]] = None

# vLLM's defaults when a flag is unset (engine arg defaults for the OpenAI server on GPUs with
# 70 GiB or more): max-num-seqs 1024, max-num-batched-tokens 8192, gpu-memory-utilization 0.9,
# and CUDA graphs for 1, 2, 4, then every 8 up to 256, then every 16 up to
# min(2 x max-num-seqs, 512).
MAX_NUM_SEQS = 1024
MAX_BATCHED_TOKENS = 8192
GPU_MEMORY_UTILIZATION = 0.9

# Prometheus counters of vLLM's own server that only grow while requests make progress,
# those of accepted requests (or processed prompts), and those of requests answered in full.
PROGRESS_METRICS = ("vllm:generation_tokens_total", "vllm:request_success_total")
STARTED_METRICS = ("vllm:prompt_tokens_total",)
DONE_METRICS = ("vllm:request_success_total",)
# Speculative decoding: mean acceptance length = 1 + accepted / drafts.
SPEC_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens_total",)
SPEC_DRAFTS = ("vllm:spec_decode_num_drafts_total",)
# KV transfer, on the decode worker (NixlConnector records on the reading side). Bytes are a
# histogram: its count is the successful transfers, its sum the bytes. External prefix-cache
# hits are counted when a request is scheduled, before its blocks load, so they prove nothing
# alone; the prompt tokens by source say where each prompt token's KV really came from.
KV_TRANSFER = KVTransferMetrics(
    transfers=Series("vllm:nixl_bytes_transferred_count"),
    failed=Series("vllm:nixl_num_failed_transfers_total"),
    bytes=Series("vllm:nixl_bytes_transferred_sum"),
    external_hits=Series("vllm:external_prefix_cache_hits_total"),
    prompt_local=Series("vllm:prompt_tokens_by_source_total", ("source", "local_compute")),
    prompt_external=Series("vllm:prompt_tokens_by_source_total", ("source", "external_kv_transfer")),
)
# The KV cache as the engine sized it, one series per engine (DP rank); older builds lack the
# tokens label and give blocks and block size.
KV_CAPACITY = KVCapacityMetric(
    metric="vllm:cache_config_info", tokens_label="kv_cache_size_tokens", blocks_labels=("num_gpu_blocks", "block_size"),
    log_pattern=r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens",
)


def server_argv(recipe: Recipe) -> Optional[list[str]]:
    """vLLM's OpenAI server module, what `vllm serve` runs. Called as a module rather than
    through the `vllm` console script, which some builds (the CPU wheel, published under
    another distribution name) cannot start."""
    return ["-m", "vllm.entrypoints.openai.api_server", "--model", recipe.model.path]


def derived_args(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    d: dict[str, ArgValue] = {} if own_server(recipe) else {"model": recipe.model.path}
    d["served-model-name"] = recipe.model.name
    if own_server(recipe):
        d.update({"host": "0.0.0.0", "port": http_port(recipe)})
    elif w.role != "agg":
        d["disaggregation-mode"] = w.role
    d["tensor-parallel-size"] = par.tp
    if par.kind is ParallelKind.DEP:
        local = len(w.slices[rank].gpus)
        d.update(
            {
                "data-parallel-size": par.dp,
                "data-parallel-size-local": local,
                "enable-expert-parallel": True,
            }
        )
        if w.multi_node:
            d.update(
                {
                    "data-parallel-address": LEADER_ADDR,
                    "data-parallel-rpc-port": worker_port(w, PortVar.rendezvous),
                    "data-parallel-start-rank": w.slices[rank].dp_ranks[0],
                }
            )
    else:
        if par.ep:
            d["enable-expert-parallel"] = True
        if w.multi_node:
            # TP wider than a node: vLLM's multiprocessing backend rendezvous over torch.distributed.
            d.update(
                {
                    "nnodes": len(w.nodes),
                    "node-rank": rank,
                    "master-addr": LEADER_ADDR,
                    "master-port": worker_port(w, PortVar.rendezvous),
                }
            )
    if rank > 0:
        d["headless"] = True
    d.update({"block-size": block_size(recipe), "max-model-len": scenario_len(recipe)})
    if w.role != "agg":
        d["kv-transfer-config"] = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    if w.role != "prefill":
        # Decode batches are sequences, so graphs keyed by concurrency cover every step;
        # prefill batches are token chunks and gain nothing from these sizes. A speculative
        # step verifies 1 + k tokens per sequence, so its batches are that much larger.
        per_seq = 1 + (recipe.speculative.num_speculative_tokens if recipe.speculative else 0)
        d["compilation-config"] = {"cudagraph_capture_sizes": cuda_graph_sizes(max(recipe.benchmark.concurrency) * per_seq)}
    if recipe.speculative:
        d["speculative-config"] = speculative_config(recipe)
    return d


def speculative_config(recipe: Recipe) -> dict[str, Any]:
    spec = recipe.speculative
    assert spec is not None
    # vLLM names the MTP method after the model family's head ("deepseek_mtp", "qwen3_next_mtp",
    # ...) and also accepts plain "mtp", which picks the head from the model's config.
    conf: dict[str, Any] = {"method": spec.method.value, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.draft_model:
        conf["model"] = spec.draft_model
    return {**conf, **spec.config}


def default_capture_sizes(cap: int) -> list[int]:
    sizes = [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, cap + 1, 16)] if s <= cap]
    return sizes or [1]


def engine_memory(recipe: Recipe, args: dict[str, ArgValue]) -> Optional[EngineMemory]:
    """The memory settings of an engine started with `args`."""
    top = max(recipe.benchmark.concurrency)
    max_seqs = int(arg_number(args, "max-num-seqs", MAX_NUM_SEQS))
    cc = args.get("compilation-config")
    sizes: list[int]
    follows = False
    if args.get("enforce-eager"):
        sizes = []
    elif isinstance(cc, dict) and isinstance(cc.get("cudagraph_capture_sizes"), list):
        sizes = [int(s) for s in cc["cudagraph_capture_sizes"]]
        follows = sizes == cuda_graph_sizes(top)
    elif isinstance(args.get("cuda-graph-sizes"), list):
        sizes = [int(s) for s in args["cuda-graph-sizes"]]  # type: ignore[union-attr]
    else:
        cap = int(arg_number(args, "max-cudagraph-capture-size", min(2 * max_seqs, 512)))
        sizes = default_capture_sizes(cap)
    return EngineMemory(backend="vllm", fraction=arg_number(args, "gpu-memory-utilization", GPU_MEMORY_UTILIZATION),
                        fraction_flag="gpu-memory-utilization", fraction_of="total", capture_sizes=sizes,
                        graphs_follow_concurrency=follows,
                        max_batched_tokens=int(arg_number(args, "max-num-batched-tokens", MAX_BATCHED_TOKENS)),
                        max_seqs=max_seqs, kv_dtype_bytes=kv_dtype_bytes(args), block_size=block_size(recipe),
                        language_model_only=bool(args.get("language-model-only")))
