"""The memory planner: per role, what one GPU holds and what is left for the KV cache.

Pure: it takes what a checkpoint holds (`Footprint`), the engine's memory settings
(`EngineMemory`), the GPU and the role's parallelism, and returns the numbers `plan` shows and
`launch` acts on. What a checkpoint holds is `footprint.py`'s job; reading its headers is
`checkpoint.py`'s.

Per GPU of a worker (each assumption is stated where it is used):
- dense weights (attention, shared experts, dense MLPs, norms, routers) / TP: replicated on
  every data-parallel rank, which is what the naive checkpoint / GPUs bound misses for DEP;
- routed experts / (TP x DP), the expert-parallel (or, without EP, tensor-parallel) shard;
- embeddings and LM head / TP (vLLM and SGLang shard the vocabulary over the TP group);
- each in the format the GPU holds it in: formats the profile runs natively as stored, the
  rest dequantized to BF16 (MoE experts may run weight-only from the stored bytes);
- a CUDA graph reserve that grows with the captured batch sizes, and the activation peak;
- the KV cache gets what is left of GPU memory x the engine's memory fraction.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.planning.footprint import BYTES_PER_PARAM, GB, UNQUANTIZED, Architecture, Footprint
from inferx_slurm.recipe.topology import ParallelKind, Parallelism

MIB = 1 << 20

# A worker fits without a model config (only a checkpoint size) when its weights leave this
# share of the budget for everything else: KV cache, graphs, activations.
KV_SHARE = 0.1

# CUDA graphs: each captured graph costs per-layer kernel nodes and outputs; the shared pool
# grows with the largest captured batch. Calibrated on seed 004: MiniMax-M3 (60 layers, hidden
# 6144) on H100 DEP8 capturing batch sizes 1..256 (9 graphs) took ~2.3 GiB.
GRAPH_BYTES_PER_LAYER = 2 * MIB
GRAPH_HIDDEN_BUFFERS_PER_SEQ = 6
# The activation peak of the engine's profiling run: about 16 hidden-sized BF16 buffers per
# batched token (q/k/v/o, MoE gate/up/down with top-k routing, residuals), plus FP32 logits
# for max-num-seqs rows in the sampler.
ACTIVATION_HIDDEN_BUFFERS = 16


# ---- what the engine does with memory ----------------------------------------------------


class EngineMemory(BaseModel):
    """The engine settings that decide memory, read from a role's engine arguments."""

    model_config = ConfigDict(frozen=True)

    backend: str
    fraction: float = Field(description="the engine's memory fraction")
    fraction_flag: str
    fraction_of: Literal["total", "static", "free"] = Field(
        description="total: weights + graphs + activations + KV within GPU x fraction (vLLM); static: weights + KV "
        "within it, graphs and activations outside (SGLang); free: KV gets that share of what the rest leaves (TRT-LLM)"
    )
    capture_sizes: list[int] = Field(default_factory=list, description="CUDA graph batch sizes; empty when eager")
    graphs_follow_concurrency: bool = Field(False, description="capture sizes derive from the benchmark concurrency")
    max_batched_tokens: int
    max_seqs: int
    kv_dtype_bytes: Optional[int] = Field(None, description="None: the model's dtype")
    block_size: int = 16
    language_model_only: bool = False


def graph_reserve(arch: Architecture, sizes: list[int]) -> int:
    if not sizes:
        return 0
    return len(sizes) * arch.layers * GRAPH_BYTES_PER_LAYER + max(sizes) * arch.layers * arch.hidden_size * 2 * GRAPH_HIDDEN_BUFFERS_PER_SEQ


def activation_reserve(arch: Architecture, max_batched_tokens: int, max_seqs: int) -> int:
    return max_batched_tokens * arch.hidden_size * 2 * ACTIVATION_HIDDEN_BUFFERS + max_seqs * arch.vocab_size * 4


# ---- the per-role plan ---------------------------------------------------------------------


class Point(BaseModel):
    """One benchmark point as a role sees it: how many requests and how many tokens each holds."""

    model_config = ConfigDict(frozen=True)

    scenario: str
    concurrency: int
    tokens: int = Field(description="tokens one request holds in this role (prefill: ISL; decode: ISL+OSL)")


class PointFit(BaseModel):
    model_config = ConfigDict(frozen=True)

    scenario: str
    concurrency: int
    tokens_per_rank: int = Field(description="tokens the point puts on each DP rank at once")
    fits: bool


class RoleMemory(BaseModel):
    """One role's memory per GPU, in GB. Serializes to the `memory` rows of `plan --json`."""

    model_config = ConfigDict(frozen=True)

    role: str
    parallel: str
    workers: int
    gpu_gb: float
    fraction: float
    fraction_flag: str
    budget_gb: float = Field(description="GPU memory x the engine's memory fraction")
    dense_gb: float
    experts_gb: float
    other_gb: float = Field(description="embeddings/LM head, vision tower, draft model")
    weights_gb: float
    held_as: dict[str, str] = Field(default_factory=dict, description="stored format -> format held on this GPU")
    graphs_gb: float
    activations_gb: float
    kv_gb: float
    kv_bytes_per_token: Optional[int] = None
    tokens_per_rank: Optional[int] = Field(None, description="tokens the KV cache of one DP rank holds")
    max_concurrency: dict[str, int] = Field(default_factory=dict, description="largest concurrency that fits, per scenario")
    points: list[PointFit] = Field(default_factory=list)
    verdict: Literal["fits", "over_capacity", "no_kv_room"]
    split_known: bool = True

    @property
    def over(self) -> list[PointFit]:
        return [p for p in self.points if not p.fits]


def held_format(kind: str, fmt: str, native: Optional[frozenset[str]], moe_weight_only: frozenset[str]) -> str:
    """The format a GPU holds a weight in: as stored when it runs natively, else BF16."""
    if native is None or fmt in UNQUANTIZED or fmt in native:
        return fmt
    if kind == "expert" and fmt in moe_weight_only:
        return fmt
    return "bf16"


def plan_role(
    role: str,
    par: Parallelism,
    workers: int,
    fp: Footprint,
    eng: EngineMemory,
    gpu_gb: float,
    points: list[Point],
    *,
    native: Optional[frozenset[str]] = None,
    moe_weight_only: frozenset[str] = frozenset(),
    draft_bytes: int = 0,
) -> RoleMemory:
    """Memory of one GPU of a `role` worker with parallelism `par` (any role name: prefill, decode, agg)."""
    tp, dp, size = par.tp, par.dp, par.size
    per_kind: dict[str, float] = {}
    held_as: dict[str, str] = {}
    for g in fp.groups:
        h = held_format(g.kind, g.format, native, moe_weight_only)
        if h != g.format:
            held_as[f"{g.kind} {g.format}"] = h
        nbytes = g.bytes if h == g.format else g.params * BYTES_PER_PARAM[h]
        per_kind[g.kind] = per_kind.get(g.kind, 0) + nbytes
    if not fp.split_known:
        dense, experts, other = 0.0, 0.0, per_kind.get("dense", 0) / size  # lower bound: spread over every GPU
    else:
        dense = per_kind.get("dense", 0) / tp
        # Routed experts shard over all GPUs of the worker: EP over TP x DP ranks, or TP without EP.
        experts = per_kind.get("expert", 0) / size
        vision = 0 if eng.language_model_only else per_kind.get("vision", 0) / tp
        other = per_kind.get("embed", 0) / tp + vision + draft_bytes / tp
    weights = dense + experts + other
    arch = fp.arch
    graphs = graph_reserve(arch, eng.capture_sizes) if arch else 0
    act = activation_reserve(arch, eng.max_batched_tokens, eng.max_seqs) if arch else 0
    gpu = gpu_gb * GB
    budget = gpu * eng.fraction
    if eng.fraction_of == "static":
        kv = min(budget - weights, gpu - weights - graphs - act)
    elif eng.fraction_of == "free":
        kv = (gpu - weights - graphs - act) * eng.fraction
    else:
        kv = budget - weights - graphs - act
    common = dict(role=role, parallel=str(par), workers=workers, gpu_gb=gpu_gb, fraction=eng.fraction,
                  fraction_flag=eng.fraction_flag, budget_gb=budget / GB, dense_gb=dense / GB, experts_gb=experts / GB,
                  other_gb=other / GB, weights_gb=weights / GB, held_as=held_as, graphs_gb=graphs / GB,
                  activations_gb=act / GB, kv_gb=max(kv, 0) / GB, split_known=fp.split_known)
    if arch is None:
        fits = weights <= budget * (1 - KV_SHARE)
        return RoleMemory(**common, verdict="fits" if fits else "no_kv_room")  # type: ignore[arg-type]
    kv_dtype = eng.kv_dtype_bytes or arch.dtype_bytes
    per_token = arch.kv_bytes_per_token(tp, kv_dtype)
    kv_free = max(kv, 0)
    ranks = workers * dp
    fits_list: list[PointFit] = []
    max_conc: dict[str, int] = {}
    for pt in points:
        tokens = math.ceil(pt.tokens / eng.block_size) * eng.block_size
        req = arch.kv_bytes_per_request(tokens, tp, kv_dtype)
        # A rank runs at most max-num-seqs requests at once; the rest wait without KV blocks.
        running = min(math.ceil(pt.concurrency / ranks), eng.max_seqs)
        fits_list.append(PointFit(scenario=pt.scenario, concurrency=pt.concurrency, tokens_per_rank=running * tokens,
                                  fits=running * req <= kv_free))
        max_conc[pt.scenario] = int(kv_free // req) * ranks if req else 0
    no_room = kv <= 0 or any(v == 0 for v in max_conc.values())
    verdict = "no_kv_room" if no_room else ("over_capacity" if any(not p.fits for p in fits_list) else "fits")
    return RoleMemory(**common, kv_bytes_per_token=per_token, tokens_per_rank=int(kv_free // per_token) if per_token else None,  # type: ignore[arg-type]
                      max_concurrency=max_conc, points=fits_list, verdict=verdict)


def alternatives(par: Parallelism) -> list[Parallelism]:
    """Changes to try when a worker has no KV room, smallest first: TEP on the same GPUs, then more GPUs."""
    out = []
    if par.kind is ParallelKind.DEP:
        out.append(Parallelism(kind=ParallelKind.TEP, size=par.size))
    for mult in (2, 4, 8):
        out.append(Parallelism(kind=par.kind, size=par.size * mult))
    return out


def describe(rm: RoleMemory) -> str:
    """One line: where a GPU's memory goes."""
    held = "".join(f", {k} held as {v}" for k, v in rm.held_as.items())
    if not rm.split_known:
        return (f"{rm.role} {rm.parallel}: {rm.weights_gb:.1f} GB of weights per GPU (checkpoint / GPUs, a lower bound), "
                f"budget {rm.budget_gb:.1f} GB ({rm.gpu_gb:.0f} GB x {rm.fraction:.2f} {rm.fraction_flag})")
    return (f"{rm.role} {rm.parallel}: weights {rm.weights_gb:.1f} GB per GPU (dense {rm.dense_gb:.1f}, experts "
            f"{rm.experts_gb:.1f}, other {rm.other_gb:.1f}{held}) + CUDA graphs {rm.graphs_gb:.1f} + activations "
            f"{rm.activations_gb:.1f} against a budget of {rm.budget_gb:.1f} GB ({rm.gpu_gb:.0f} GB x {rm.fraction:.2f} "
            f"{rm.fraction_flag})")
