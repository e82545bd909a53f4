"""The memory planner: per role, what one GPU holds and what is left for the KV cache.

Pure: it takes what a checkpoint holds (`Footprint`), the engine's memory settings
(`EngineMemory`), the GPU and the role's parallelism, and returns the numbers `plan` shows and
`launch` acts on. Reading checkpoint headers is `checkpoint.py`'s job.

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
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.recipe.topology import ParallelKind, Parallelism

GB = 1e9
MIB = 1 << 20

Kind = Literal["expert", "dense", "embed", "vision", "mtp"]
UNQUANTIZED = frozenset({"bf16", "fp16", "fp32"})
# Stored bytes per parameter, scales included: MX formats carry one E8M0 scale per 32 values,
# NVFP4 one FP8 scale per 16 (OCP Microscaling spec v1.0; NVIDIA NVFP4 format).
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
    "mxfp8": 1 + 1 / 32, "mxfp4": 0.5 + 1 / 32, "nvfp4": 0.5 + 1 / 16, "int4": 0.5,
}

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


# ---- what a checkpoint holds ---------------------------------------------------------------


class WeightGroup(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind
    format: str
    params: int = Field(description="logical parameters (4-bit values unpacked)")
    bytes: int = Field(description="bytes as stored, scales included")


class Architecture(BaseModel):
    """What sizes the KV cache, the graphs and the activations, from config.json."""

    model_config = ConfigDict(frozen=True)

    layers: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    vocab_size: int = 0
    dtype_bytes: int = 2
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    sliding_window: Optional[int] = None
    sliding_layers: int = 0
    state_layers: int = 0
    index_layers: int = 0
    index_head_dim: int = 0
    experts: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Optional["Architecture"]:
        """None when the config lacks the fields the KV cache size needs."""
        # Multimodal checkpoints (MiniMax-M3-VL, Qwen-VL, ...) nest the language model's fields.
        text = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg
        layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
        hidden = _first(text, "hidden_size", "n_embd", "d_model")
        heads = _first(text, "num_attention_heads", "n_head")
        if not (layers and hidden and heads):
            return None
        layer_types = text.get("layer_types") if isinstance(text.get("layer_types"), list) else []
        window = text.get("sliding_window") if isinstance(text.get("sliding_window"), int) else None
        sliding = sum(1 for t in layer_types if "sliding" in str(t))
        if window and not layer_types and text.get("use_sliding_window", True):
            sliding = layers  # Mistral-style: every layer holds only the window
        index_dim = int(_first(text, "index_head_dim") or 0)
        # MiniMax-M3 keeps indexer keys only on its sparse layers (layer_types 'minimax_m3_sparse');
        # DeepSeek-V3.2 has an indexer on every layer and no layer_types.
        index_layers = sum(1 for t in layer_types if "sparse" in str(t)) if layer_types else (layers if index_dim else 0)
        dtype = str(text.get("torch_dtype") or text.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
        return cls(
            layers=layers,
            hidden_size=hidden,
            kv_heads=_first(text, "num_key_value_heads", "n_head_kv") or heads,
            head_dim=_first(text, "head_dim") or hidden // heads,
            vocab_size=_first(text, "vocab_size") or 0,
            dtype_bytes=4 if "32" in dtype else 2,
            kv_lora_rank=_first(text, "kv_lora_rank") or 0,
            qk_rope_head_dim=_first(text, "qk_rope_head_dim") or 0,
            sliding_window=window if sliding else None,
            sliding_layers=sliding,
            state_layers=sum(1 for t in layer_types if "linear" in str(t) or "mamba" in str(t)),
            index_layers=index_layers if index_dim else 0,
            index_head_dim=index_dim,
            experts=_first(text, "num_local_experts", "n_routed_experts", "num_experts") or 0,
        )

    def _layer_token_bytes(self, tp: int, kv_bytes: int) -> int:
        if self.kv_lora_rank:
            # MLA caches one compressed latent + the rope key per token, the same on every TP rank.
            return (self.kv_lora_rank + self.qk_rope_head_dim) * kv_bytes
        # GQA: KV heads split over TP; with more ranks than heads each rank keeps a replica.
        return 2 * max(1, self.kv_heads // tp) * self.head_dim * kv_bytes

    def kv_bytes_per_token(self, tp: int, kv_bytes: int) -> int:
        """KV bytes one token costs on one GPU, every attention layer holding it."""
        attn = self.layers - self.state_layers
        return attn * self._layer_token_bytes(tp, kv_bytes) + self.index_layers * self.index_head_dim * kv_bytes

    def kv_bytes_per_request(self, tokens: int, tp: int, kv_bytes: int) -> int:
        """KV bytes of one request of `tokens` tokens on one GPU; sliding layers keep only the window."""
        full = self.layers - self.state_layers - self.sliding_layers
        held = min(tokens, self.sliding_window) if self.sliding_window else tokens
        per_layer = self._layer_token_bytes(tp, kv_bytes)
        return (full * tokens + self.sliding_layers * held) * per_layer + self.index_layers * self.index_head_dim * kv_bytes * tokens


def _first(d: dict[str, Any], *keys: str) -> Optional[int]:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


class Footprint(BaseModel):
    """Where a model's bytes are: weight groups by kind and format, and its architecture."""

    model_config = ConfigDict(frozen=True)

    source: str
    groups: list[WeightGroup]
    arch: Optional[Architecture] = None
    split_known: bool = Field(True, description="False when only the total is known (spread evenly: a lower bound)")

    def stored(self, kind: Optional[str] = None) -> int:
        return sum(g.bytes for g in self.groups if kind is None or g.kind == kind)

    def formats(self, kind: str) -> list[str]:
        return sorted({g.format for g in self.groups if g.kind == kind})


_VISION = re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|multi_modal_projector|mm_projector|audio_tower)\.")
_MTP = re.compile(r"(^|\.)mtp[._]")
_EMBED = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|word_embeddings|embed_out|tok_embeddings|output_layer)\.|^output\.weight$")
_EXPERT = re.compile(r"(^|\.)experts\.")
_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
_SCALE_SUFFIXES = ("_scale_inv", "_scale_2", "_scale", "_scales", "_zeros", "_amax")


def classify(name: str, shape: tuple[int, ...], arch: Optional[Architecture]) -> Kind:
    """Which group a tensor belongs to, by its name and, for fused expert stacks, its shape."""
    if _VISION.search(name):
        return "vision"
    m = _LAYER.search(name)
    if _MTP.search(name) or (m and arch and int(m.group(2)) >= arch.layers):
        return "mtp"  # next-token-prediction layers past the last decoder layer load only as a draft
    if _EMBED.search(name):
        return "embed"
    if "shared_expert" in name:
        return "dense"
    if _EXPERT.search(name):
        return "expert"
    # Fused expert stacks ([experts, out, in]) under names without "experts" (e.g. block_sparse_moe.w1).
    if arch and arch.experts and len(shape) == 3 and shape[0] == arch.experts:
        return "expert"
    return "dense"


def tensor_format(dtype: str, shape: tuple[int, ...], scale: Optional[tuple[str, tuple[int, ...]]], hint: str = "") -> str:
    """The storage format of a weight, from its dtype and its scale tensor's dtype and shape."""
    d = dtype.upper()
    if d in ("BF16", "F16", "F32"):
        return {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}[d]
    sdt, sshape = scale if scale else ("", ())
    group = (shape[-1] / sshape[-1]) if shape and sshape and sshape[-1] else 0
    if d.startswith("F8"):
        # MX scales are E8M0 bytes, one per 32 values along the reduction dim; FP8 block scales are F32.
        return "mxfp8" if sdt in ("U8", "F8_E8M0") and group == 32 else ("mxfp8" if "mxfp8" in hint and not sdt else "fp8")
    if d in ("U8", "I8") and scale:
        if sdt.startswith("F8_E4"):
            return "nvfp4"
        if sdt in ("U8", "F8_E8M0"):
            return "mxfp4"
        return "int8" if d == "I8" else "int4"
    if d in ("I32", "U32") and scale:
        return "int4"
    return "int8" if d in ("I8", "U8") else "bf16"


def _params(fmt: str, dtype: str, numel: int) -> int:
    if fmt in ("mxfp4", "nvfp4") or (fmt == "int4" and dtype.upper() in ("U8", "I8")):
        return numel * 2  # two 4-bit values a byte
    if fmt == "int4":
        return numel * 8  # GPTQ/AWQ pack eight 4-bit values an int32
    return numel


def footprint_from_tensors(tensors: list[Any], config: dict[str, Any], source: str) -> Footprint:
    """Group a checkpoint's tensors (objects with name, dtype, shape, nbytes) by kind and format."""
    arch = Architecture.from_config(config)
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") or {}
    hint = " ".join(str(v).lower() for v in quant.values() if isinstance(v, str)) if isinstance(quant, dict) else ""
    by_name = {t.name: t for t in tensors}

    def base_of(name: str) -> Optional[str]:
        for suf in _SCALE_SUFFIXES:
            if name.endswith(suf):
                stem = name[: -len(suf)]
                for cand in (stem, stem + "_blocks", stem + ".weight", stem + "weight"):
                    if cand != name and cand in by_name:
                        return cand
        return None

    scales: dict[str, list[Any]] = {}
    for t in tensors:
        b = base_of(t.name)
        if b:
            scales.setdefault(b, []).append(t)
    acc: dict[tuple[str, str], list[int]] = {}
    for t in tensors:
        if base_of(t.name):
            continue  # counted with its weight
        own = scales.get(t.name, [])
        # NVFP4 carries a per-16 block scale and a per-tensor one; the block scale tells the format.
        sc = max(own, key=lambda s: math.prod(s.shape) if s.shape else 1) if own else None
        fmt = tensor_format(t.dtype, t.shape, (sc.dtype, sc.shape) if sc else None, hint)
        numel = math.prod(t.shape) if t.shape else 1
        kind = classify(t.name, t.shape, arch)
        slot = acc.setdefault((kind, fmt), [0, 0])
        slot[0] += _params(fmt, t.dtype, numel)
        slot[1] += t.nbytes + sum(s.nbytes for s in own)
    groups = [WeightGroup(kind=k, format=f, params=p, bytes=b) for (k, f), (p, b) in sorted(acc.items())]
    return Footprint(source=source, groups=groups, arch=arch)


def footprint_from_split(
    *, expert_gb: float, dense_gb: float, embed_gb: float, fmt: str, embed_fmt: str, config: dict[str, Any], source: str
) -> Footprint:
    """A footprint from the sizes a recipe states (the checkpoint is not local)."""
    groups = []
    for kind, gb, f in (("expert", expert_gb, fmt), ("dense", dense_gb, fmt), ("embed", embed_gb, embed_fmt)):
        if gb > 0:
            b = int(gb * GB)
            groups.append(WeightGroup(kind=kind, format=f, params=int(b / BYTES_PER_PARAM[f]), bytes=b))  # type: ignore[arg-type]
    return Footprint(source=source, groups=groups, arch=Architecture.from_config(config) if config else None)


def footprint_from_total(weights_gb: float, source: str) -> Footprint:
    b = int(weights_gb * GB)
    return Footprint(source=source, groups=[WeightGroup(kind="dense", format="bf16", params=b // 2, bytes=b)], split_known=False)


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
