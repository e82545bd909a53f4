"""What a checkpoint holds: weight groups by kind (experts, dense, embeddings, vision, MTP) and
storage format, and the architecture that sizes the KV cache, graphs and activations.

Pure: built from tensor descriptions (name, dtype, shape, bytes) that `checkpoint.py` reads
from safetensors headers, or from the sizes a recipe states.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

GB = 1e9

Kind = Literal["expert", "dense", "embed", "vision", "mtp"]
UNQUANTIZED = frozenset({"bf16", "fp16", "fp32"})
# Stored bytes per parameter, scales included: MX formats carry one E8M0 scale per 32 values,
# NVFP4 one FP8 scale per 16 (OCP Microscaling spec v1.0; NVIDIA NVFP4 format).
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
    "mxfp8": 1 + 1 / 32, "mxfp4": 0.5 + 1 / 32, "nvfp4": 0.5 + 1 / 16, "int4": 0.5,
}


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
