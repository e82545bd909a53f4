"""TensorRT-LLM: `dynamo.trtllm` workers, their flags and memory defaults."""

from __future__ import annotations

from typing import Optional

from inferx_slurm.engines.common import arg_number, block_size, cuda_graph_sizes, kv_dtype_bytes, scenario_len
from inferx_slurm.errors import RecipeError
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics
from inferx_slurm.planning.memory import EngineMemory
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.recipe.sections import ArgValue
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import ParallelKind, Parallelism

MODULE = "dynamo.trtllm"
# Engine builds come on top of the weight load.
STARTUP_TIMEOUT_S = 2400.0
# What the worker's preflight requires (keys of runtime/identity_probe.py's NEEDS).
PREFLIGHT_NEEDS = ("trtllm",)
# NIXL is not required by default (engine.require_nixl turns the check on).
KV_OVER_NIXL = False
FOLLOWER_ARGV: Optional[list[str]] = None

# The KV cache takes --free-gpu-memory-fraction (default 0.9) of what the weights leave.
FREE_GPU_MEMORY_FRACTION = 0.9
MAX_BATCH_SIZE = 2048
MAX_NUM_TOKENS = 8192
# CUDA graphs are captured for batches up to this many sequences (or max-batch-size if lower).
CUDA_GRAPH_MAX_BS = 128

PROGRESS_METRICS: tuple[str, ...] = ()
STARTED_METRICS: tuple[str, ...] = ()
DONE_METRICS: tuple[str, ...] = ()
SPEC_ACCEPTED: tuple[str, ...] = ()
SPEC_DRAFTS: tuple[str, ...] = ()
# No KV-transfer or KV-capacity series are known for TensorRT-LLM here: "not measured".
KV_TRANSFER: Optional[KVTransferMetrics] = None
KV_CAPACITY: Optional[KVCapacityMetric] = None


def server_argv(recipe: Recipe) -> Optional[list[str]]:
    return None  # served through the Dynamo frontend only


def derived_args(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    if w.multi_node:
        raise RecipeError(
            f"topology.{w.role}",
            w.parallel,
            f"trtllm workers wider than one node ({plan.gpus_per_node} GPUs) need an MPI launch, not supported yet; "
            "use backend vllm or sglang, or a worker that fits one node",
        )
    d: dict[str, ArgValue] = {
        "model-path": recipe.model.path,
        "served-model-name": recipe.model.name,
        "disaggregation-mode": w.role,
        "tensor-parallel-size": par.size,
    }
    if par.ep:
        d["expert-parallel-size"] = par.size
    if par.kind is ParallelKind.DEP:
        d["enable-attention-dp"] = True
    d.update({"kv-block-size": block_size(recipe), "max-seq-len": scenario_len(recipe)})
    return d


def engine_memory(recipe: Recipe, args: dict[str, ArgValue]) -> Optional[EngineMemory]:
    max_bs = int(arg_number(args, "max-batch-size", MAX_BATCH_SIZE))
    return EngineMemory(backend="trtllm", fraction=arg_number(args, "free-gpu-memory-fraction", FREE_GPU_MEMORY_FRACTION),
                        fraction_flag="free-gpu-memory-fraction", fraction_of="free",
                        capture_sizes=cuda_graph_sizes(min(max_bs, CUDA_GRAPH_MAX_BS)),
                        max_batched_tokens=int(arg_number(args, "max-num-tokens", MAX_NUM_TOKENS)), max_seqs=max_bs,
                        kv_dtype_bytes=kv_dtype_bytes(args), block_size=block_size(recipe))
