"""The tiny weightless model the mock engines and aiperf share: deterministic, idempotent,
a valid HF model dir and a valid offline HF hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from inferx_slurm.localdev import tiny_model as tm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# Interpreters that may have transformers + jinja2 (the venvs setup_scripts/install_dynamo.sh makes).
CANDIDATE_PYTHONS = [
    sys.executable,
    os.environ.get("INFERX_DYNAMO_PYTHON", "/opt/dynamo-venv/bin/python"),
    "/opt/aiperf-venv/bin/python",
]
EXPECTED = {
    "README.md",
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    dest = tm.make_tiny_model(root / "model", hf_cache=root / "hf")
    return root, dest


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_writes_the_model_files(built):
    _, dest = built
    assert {p.name for p in dest.iterdir()} == EXPECTED
    for name in EXPECTED - {"README.md"}:
        json.loads((dest / name).read_text())


def test_same_bytes_every_run_and_process(built, tmp_path):
    _, dest = built
    again = tm.make_tiny_model(tmp_path / "again")
    assert _digests(again) == _digests(dest)
    # A fresh interpreter with another hash seed trains the tokenizer to the same bytes.
    code = (
        "import hashlib, json, sys; from inferx_slurm.localdev.tiny_model import model_files; "
        "print(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in model_files().items()}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == _digests(dest)


def test_idempotent_leaves_an_identical_model_alone(built):
    root, dest = built
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.iterdir()}
    snap_before = sorted((root / "hf").rglob("*"))
    tm.make_tiny_model(dest, hf_cache=root / "hf")
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.iterdir()} == before
    assert sorted((root / "hf").rglob("*")) == snap_before
    # No temp or backup dirs left beside it.
    assert sorted(p.name for p in root.iterdir()) == ["hf", "model"]


def test_replaces_a_different_dir_whole(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    (dest / "stale.bin").write_bytes(b"x")
    tm.make_tiny_model(dest)
    assert {p.name for p in dest.iterdir()} == EXPECTED
    assert json.loads((dest / "config.json").read_text())["model_type"] == "qwen3_moe"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_config_is_a_small_moe_matching_the_tokenizer(built):
    _, dest = built
    cfg = json.loads((dest / "config.json").read_text())
    tok = json.loads((dest / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"])
    assert cfg["vocab_size"] == vocab
    assert 2000 <= vocab <= 8192
    assert cfg["model_type"] == "qwen3_moe"
    assert cfg["max_position_embeddings"] == 32768
    assert cfg["num_experts"] == cfg["num_local_experts"] > 1
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"):
        assert isinstance(cfg[key], int) and cfg[key] > 0
    gen = json.loads((dest / "generation_config.json").read_text())
    assert cfg["eos_token_id"] in gen["eos_token_id"]


def test_hf_cache_layout(built):
    root, dest = built
    repo = root / "hf" / "models--inferx--tiny-moe"
    rev = (repo / "refs" / "main").read_text()
    assert len(rev) == 40 and int(rev, 16) >= 0
    snap = repo / "snapshots" / rev
    assert {p.name for p in snap.iterdir()} == EXPECTED
    for p in snap.iterdir():
        assert p.is_symlink() and os.readlink(p).startswith("../../blobs/")
        data = p.read_bytes()
        assert data == (dest / p.name).read_bytes()
        # Blobs are named like huggingface_hub names non-LFS files: git's blob sha1.
        assert p.resolve().name == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_hf_cache_resolves_offline_with_huggingface_hub(built):
    hub = pytest.importorskip("huggingface_hub")
    root, dest = built
    path = hub.try_to_load_from_cache("inferx/tiny-moe", "tokenizer.json", cache_dir=str(root / "hf"))
    assert isinstance(path, str) and Path(path).read_bytes() == (dest / "tokenizer.json").read_bytes()


def test_tokenizer_round_trips_text(built):
    from tokenizers import Tokenizer

    _, dest = built
    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    texts = [
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
        "The quick brown fox jumps over the lazy dog 12345 times; naïve café — 漢字 🙂",
        "  leading and trailing spaces\n\nand\ttabs  ",
        "<|im_start|>user\nhello<|im_end|>\n",
    ]
    for text in texts:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    words = texts[0].split()
    n = len(tok.encode(texts[0]).ids)
    assert len(words) <= n <= 3 * len(words)  # word-ish, not byte-per-token
    assert [tok.token_to_id(t) for t in tm.SPECIAL_TOKENS] == [0, 1, 2]


CHAT_CHECK = r"""
import json, sys
from transformers import AutoTokenizer
path, cache = sys.argv[1], sys.argv[2]
t = AutoTokenizer.from_pretrained(path)
msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
text = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": " you"}]}]
hub = AutoTokenizer.from_pretrained("inferx/tiny-moe", cache_dir=cache, local_files_only=True)
print(json.dumps({
    "text": text,
    "parts": t.apply_chat_template(parts, tokenize=False),
    "eos": t.eos_token, "pad": t.pad_token, "len": len(t),
    "roundtrip": t.decode(t.encode("To be, or not to be")),
    "hub_len": len(hub),
}))
"""


def _run_chat_check(python: str, dest: Path, cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run(
        [python, "-c", CHAT_CHECK, str(dest), str(cache)], env=env, check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _python_with_transformers() -> str | None:
    for python in CANDIDATE_PYTHONS:
        if python and os.access(python, os.X_OK):
            probe = subprocess.run([python, "-c", "import transformers, jinja2"], capture_output=True)
            if probe.returncode == 0:
                return python
    return None


def test_transformers_loads_it_and_applies_the_chat_template(built):
    """With transformers (+ jinja2) from this interpreter or one of the project's venvs."""
    root, dest = built
    python = _python_with_transformers()
    if python is None:
        pytest.skip("transformers + jinja2 not installed here nor in /opt/{dynamo,aiperf}-venv")
    got = _run_chat_check(python, dest, root / "hf")
    assert got["text"] == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert got["parts"] == "<|im_start|>user\nhi you<|im_end|>\n"
    assert got["eos"] == "<|im_end|>" and got["pad"] == "<|endoftext|>"
    assert got["len"] == got["hub_len"] == json.loads((dest / "config.json").read_text())["vocab_size"]
    assert got["roundtrip"] == "To be, or not to be"


def test_cli(tmp_path, capsys):
    assert tm.main([str(tmp_path / "m"), "--hf-cache", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "HF_HUB_CACHE=" in out and "--tokenizer inferx/tiny-moe" in out
    assert (tmp_path / "hf" / "models--inferx--tiny-moe" / "refs" / "main").is_file()


def test_rejects_a_name_that_is_not_org_slash_name(tmp_path):
    with pytest.raises(ValueError):
        tm.make_tiny_model(tmp_path / "m", name="tiny-moe")
