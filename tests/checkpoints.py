"""Fake checkpoints with real layouts: config.json, a safetensors index and shards whose headers
describe the full tensor shapes, while the data sections are sparse files (no bytes written).

    python tests/checkpoints.py DIR [--shards 60]     # build the MiniMax-M3-like MXFP8 checkpoint

The MiniMax-M3 text shape is the published config (MiniMaxM3VLTextConfig defaults: hidden 6144,
60 layers of which 0-2 dense and 3-59 MoE with MiniMax Sparse Attention, 64 query / 4 KV heads
of 128, 128 routed experts top-4 of intermediate 3072, a shared expert of 3072, dense MLP 12288,
vocab 200064, indexer keys of 128 on sparse layers). The MXFP8 checkpoint keeps every linear
weight in F8_E4M3 with one E8M0 (U8) scale per 32 values, norms, routers, indexer and embeddings
in BF16, and a BF16 vision tower: about 443 GB, ~10.6 GB of it dense (seed 004: "~444 GB").
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I8": 1, "I32": 4}

M3_TEXT = {
    "vocab_size": 200064, "hidden_size": 6144, "intermediate_size": 3072, "dense_intermediate_size": 12288,
    "shared_intermediate_size": 3072, "num_hidden_layers": 60, "num_attention_heads": 64, "num_key_value_heads": 4,
    "head_dim": 128, "num_local_experts": 128, "num_experts_per_tok": 4, "index_n_heads": 4, "index_head_dim": 128,
    "index_block_size": 128, "index_topk_blocks": 16, "torch_dtype": "bfloat16",
    "layer_types": ["full_attention"] * 3 + ["minimax_m3_sparse"] * 57,
    "mlp_layer_types": ["dense"] * 3 + ["sparse"] * 57,
}


def mxfp8(name: str, out: int, inp: int) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"{name}.weight", "F8_E4M3", (out, inp)), (f"{name}.weight_scale_inv", "U8", (out, inp // 32))]


def bf16(name: str, *shape: int) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, "BF16", tuple(shape))]


def minimax_m3_tensors(text: dict = M3_TEXT, vision_layers: int = 32) -> list[tuple[str, str, tuple[int, ...]]]:
    h, heads, kvh, hd = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]
    t = bf16("model.language_model.embed_tokens.weight", text["vocab_size"], h)
    for i in range(text["num_hidden_layers"]):
        p = f"model.language_model.layers.{i}"
        t += bf16(f"{p}.input_layernorm.weight", h) + bf16(f"{p}.post_attention_layernorm.weight", h)
        t += mxfp8(f"{p}.self_attn.q_proj", heads * hd, h) + mxfp8(f"{p}.self_attn.k_proj", kvh * hd, h)
        t += mxfp8(f"{p}.self_attn.v_proj", kvh * hd, h) + mxfp8(f"{p}.self_attn.o_proj", h, heads * hd)
        t += bf16(f"{p}.self_attn.q_norm.weight", hd) + bf16(f"{p}.self_attn.k_norm.weight", hd)
        if text["layer_types"][i] == "minimax_m3_sparse":
            idx = text["index_head_dim"]
            t += bf16(f"{p}.self_attn.indexer.q_proj.weight", text["index_n_heads"] * idx, h)
            t += bf16(f"{p}.self_attn.indexer.k_proj.weight", idx, h)
        if text["mlp_layer_types"][i] == "dense":
            d = text["dense_intermediate_size"]
            t += mxfp8(f"{p}.mlp.gate_proj", d, h) + mxfp8(f"{p}.mlp.up_proj", d, h) + mxfp8(f"{p}.mlp.down_proj", h, d)
            continue
        e, s = text["intermediate_size"], text["shared_intermediate_size"]
        t += bf16(f"{p}.mlp.gate.weight", text["num_local_experts"], h)
        t += [(f"{p}.mlp.gate.e_score_correction_bias", "F32", (text["num_local_experts"],))]
        t += mxfp8(f"{p}.mlp.shared_experts.gate_proj", s, h) + mxfp8(f"{p}.mlp.shared_experts.up_proj", s, h)
        t += mxfp8(f"{p}.mlp.shared_experts.down_proj", h, s)
        for j in range(text["num_local_experts"]):
            q = f"{p}.mlp.experts.{j}"
            t += mxfp8(f"{q}.w1", e, h) + mxfp8(f"{q}.w3", e, h) + mxfp8(f"{q}.w2", h, e)
    t += bf16("model.language_model.norm.weight", h) + bf16("lm_head.weight", text["vocab_size"], h)
    vh = 1280
    for i in range(vision_layers):
        p = f"model.vision_tower.blocks.{i}"
        t += bf16(f"{p}.attn.qkv.weight", 3 * vh, vh) + bf16(f"{p}.attn.proj.weight", vh, vh)
        t += bf16(f"{p}.mlp.fc1.weight", 4 * vh, vh) + bf16(f"{p}.mlp.fc2.weight", vh, 4 * vh)
    return t


def write_checkpoint(root: Path, tensors: list[tuple[str, str, tuple[int, ...]]], config: dict, shards: int) -> Path:
    """Write config.json, the index and `shards` safetensors files whose data sections are holes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    sizes = [DTYPE_BYTES[d] * _prod(s) for _, d, s in tensors]
    per_shard = sum(sizes) / shards
    groups: list[list[int]] = [[]]
    acc = 0
    for i, n in enumerate(sizes):
        if acc >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        acc += n
    weight_map = {}
    for k, idxs in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {}, 0
        for i in idxs:
            name, dtype, shape = tensors[i]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + sizes[i]]}
            off += sizes[i]
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)  # sparse: the weights are never written, nor read
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}))
    return root


def minimax_m3_mxfp8(root: Path, shards: int = 60) -> Path:
    config = {
        "architectures": ["MiniMaxM3VLForConditionalGeneration"], "model_type": "minimax_m3_vl",
        "text_config": M3_TEXT, "vision_config": {"hidden_size": 1280, "num_hidden_layers": 32},
        "quantization_config": {"quant_method": "mxfp8", "weight_block_size": [1, 32]},
    }
    return write_checkpoint(Path(root), minimax_m3_tensors(), config, shards)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Build the MiniMax-M3-like MXFP8 fake checkpoint (sparse files).")
    ap.add_argument("dir")
    ap.add_argument("--shards", type=int, default=60)
    a = ap.parse_args()
    print(minimax_m3_mxfp8(Path(a.dir), a.shards))
