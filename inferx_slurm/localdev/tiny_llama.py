"""A tiny Llama with real (random) weights, for the real engine on the local cluster.

vLLM loads a model the way it loads any checkpoint: ``config.json``, safetensors weights and
a tokenizer. Nothing can be downloaded here, so this module writes one from scratch, with the
tokenizer and chat template of the local cluster's weightless model (``tiny_model``) so that
the benchmark client and both models tokenize alike:

* ``LlamaForCausalLM``, hidden 128, 2 layers, 2 heads of 64 (2 KV heads), intermediate 256,
  float32 weights drawn from a fixed seed: about 1.4 M parameters, 5.6 MB;
* ``model.safetensors`` written by hand (an 8-byte header length, a JSON header, the raw
  little-endian tensors), so building it needs neither torch nor numpy.

Its answers are gibberish; it exists so that model loading, KV-cache sizing, prefill->decode
KV transfer, metrics and failures are those of a real engine. Deterministic and idempotent
like ``tiny_model``: the same bytes on every run, an identical existing dir is left alone.

CLI: ``python -m inferx_slurm.localdev.tiny_llama DEST [--hf-cache DIR] [--name ORG/NAME]``.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
from array import array
from pathlib import Path
from typing import Optional

from inferx_slurm.localdev.tiny_model import install_dir, install_hf_cache, tokenizer_files

DEFAULT_NAME = "inferx/tiny-llama"
SEED = 20261202
HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 2
KV_HEADS = 2
HEAD_DIM = 64
MAX_POSITION_EMBEDDINGS = 4096
INIT_STD = 0.02


def _tensor_shapes(vocab: int) -> dict[str, list[int]]:
    """Every tensor of the checkpoint, in the names transformers' and vLLM's Llama loaders use."""
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, HIDDEN]}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": [HIDDEN],
            f"{p}.self_attn.q_proj.weight": [HEADS * HEAD_DIM, HIDDEN],
            f"{p}.self_attn.k_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            f"{p}.self_attn.v_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            f"{p}.self_attn.o_proj.weight": [HIDDEN, HEADS * HEAD_DIM],
            f"{p}.post_attention_layernorm.weight": [HIDDEN],
            f"{p}.mlp.gate_proj.weight": [INTERMEDIATE, HIDDEN],
            f"{p}.mlp.up_proj.weight": [INTERMEDIATE, HIDDEN],
            f"{p}.mlp.down_proj.weight": [HIDDEN, INTERMEDIATE],
        })
    shapes["model.norm.weight"] = [HIDDEN]
    shapes["lm_head.weight"] = [vocab, HIDDEN]
    return shapes


def _values(rng: random.Random, name: str, count: int) -> bytes:
    if name.endswith("norm.weight"):
        return array("f", [1.0] * count).tobytes()  # RMSNorm scales start at one, as in training
    # Uniform on [-a, a] with the standard deviation of a normal init: a = std * sqrt(3).
    bound = INIT_STD * 3 ** 0.5
    raw = array("I", rng.randbytes(4 * count))
    scale = 2 * bound / 2**32
    return array("f", [u * scale - bound for u in raw]).tobytes()


def safetensors_bytes(shapes: dict[str, list[int]], seed: int = SEED) -> bytes:
    """A float32 safetensors file holding ``shapes`` filled from ``seed``."""
    rng = random.Random(seed)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        data = _values(rng, name, count)
        if sys.byteorder != "little":  # the format is little-endian whatever the host
            swapped = array("f", data)
            swapped.byteswap()
            data = swapped.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def model_files(name: str = DEFAULT_NAME) -> dict[str, bytes]:
    """Every file of the model dir, name -> exact bytes."""
    files, ids, vocab = tokenizer_files()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": name,
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "initializer_range": INIT_STD,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "torch_dtype": "float32",
        "transformers_version": "4.56.0",
    }
    generation_config = {
        "bos_token_id": ids["bos"],
        "eos_token_id": [ids["eos"], ids["bos"]],
        "pad_token_id": ids["pad"],
        "transformers_version": "4.56.0",
    }

    def dump(doc: dict) -> bytes:
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()

    readme = (
        f"# {name}\n\nA tiny Llama with random weights for plumbing tests of a real engine.\n"
        "Generated by `python -m inferx_slurm.localdev.tiny_llama`; its answers mean nothing.\n"
    )
    files.update({
        "README.md": readme.encode(),
        "config.json": dump(config),
        "generation_config.json": dump(generation_config),
        "model.safetensors": safetensors_bytes(_tensor_shapes(vocab)),
    })
    return files


def make_tiny_llama(dest: Path, *, name: str = DEFAULT_NAME, hf_cache: Optional[Path] = None) -> Path:
    """Write the model dir to ``dest`` (and, with ``hf_cache``, into that hub cache as ``name``).
    Idempotent and atomic; returns ``dest``."""
    if name.count("/") != 1 or any(not part for part in name.split("/")):
        raise ValueError(f"model name must be ORG/NAME, got {name!r}")
    files = model_files(name)
    install_dir(Path(dest), files)
    if hf_cache is not None:
        install_hf_cache(Path(hf_cache), files, name)
    return Path(dest)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferx_slurm.localdev.tiny_llama",
                                description="Write a tiny random-weight Llama (safetensors + tokenizer) for a real engine.")
    p.add_argument("dest", type=Path, help="model directory to write (created or replaced atomically)")
    p.add_argument("--hf-cache", type=Path, help="also lay the model out in this HF hub cache dir (HF_HUB_CACHE)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"hub repo id ORG/NAME (default {DEFAULT_NAME})")
    args = p.parse_args(argv)
    try:
        make_tiny_llama(args.dest, name=args.name, hf_cache=args.hf_cache)
    except (ValueError, OSError, ImportError) as e:
        print(f"tiny_llama: {e}", file=sys.stderr)
        return 1
    print(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
