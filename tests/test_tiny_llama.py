"""The tiny Llama with real weights that the real engine serves on the local cluster: a valid
safetensors checkpoint (read by our own header reader and by transformers' loader), the shared
tokenizer, deterministic and idempotent."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from inferx_slurm.localdev import tiny_llama as tl
from inferx_slurm.localdev import tiny_model as tm
from inferx_slurm.planning.checkpoint import read_checkpoint

VLLM_PY = Path(os.environ.get("INFERX_VLLM_VENV", "/opt/vllm-venv")) / "bin" / "python"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-llama")
    return tl.make_tiny_llama(root / "model", hf_cache=root / "hf")


def test_checkpoint_reads_as_a_llama_of_the_stated_size(model):
    ckpt = read_checkpoint(model)
    assert ckpt is not None
    names = {t.name: t for t in ckpt.tensors}
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert names["model.embed_tokens.weight"].shape == (config["vocab_size"], tl.HIDDEN)
    assert names["lm_head.weight"].shape == (config["vocab_size"], tl.HIDDEN)
    assert names["model.layers.1.mlp.down_proj.weight"].shape == (tl.HIDDEN, tl.INTERMEDIATE)
    assert all(t.dtype == "F32" for t in ckpt.tensors)
    size = (model / "model.safetensors").stat().st_size
    # header + 4 bytes a parameter: nothing missing, nothing extra
    expected = sum(4 * _numel(t.shape) for t in ckpt.tensors)
    assert all(t.nbytes == 4 * _numel(t.shape) for t in ckpt.tensors)
    assert expected < size < expected + 16384, (expected, size)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_shares_the_mock_models_tokenizer(model, tmp_path):
    weightless = tm.make_tiny_model(tmp_path / "moe")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (model / name).read_bytes() == (weightless / name).read_bytes(), name


def test_deterministic_and_idempotent(model, tmp_path):
    again = tl.make_tiny_llama(tmp_path / "again")
    for f in sorted(p.name for p in model.iterdir()):
        assert hashlib.sha256((model / f).read_bytes()).hexdigest() == hashlib.sha256((again / f).read_bytes()).hexdigest(), f
    before = (again / "model.safetensors").stat().st_mtime_ns
    tl.make_tiny_llama(tmp_path / "again")
    assert (again / "model.safetensors").stat().st_mtime_ns == before, "an identical model dir must be left alone"
    assert (model.parent / "hf" / "models--inferx--tiny-llama" / "refs" / "main").is_file()


@pytest.mark.skipif(not VLLM_PY.exists(), reason="the engine environment (setup_scripts/install_engines.sh) is not installed")
def test_transformers_loads_it_and_generates(model):
    # The engine environment's own loader: every tensor is found, none is left randomly initialized.
    code = f"""
import math, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m, info = AutoModelForCausalLM.from_pretrained({str(model)!r}, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
tok = AutoTokenizer.from_pretrained({str(model)!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "hello there"}}], add_generation_prompt=True, return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
with torch.no_grad():
    logits = m(ids).logits
assert torch.isfinite(logits).all()
out = m.generate(ids, max_new_tokens=4, do_sample=False)
print(out.shape[1] - ids.shape[1])
"""
    r = subprocess.run([str(VLLM_PY), "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "4"
