"""A tiny, weightless MoE "model" for the CPU mock engine and the benchmark client.

Dynamo's mocker (``python -m dynamo.mocker``) and its frontend need only a model
*directory*: ``config.json`` (sizes: the mocker derives KV bytes per token from it) and a
tokenizer with a chat template. aiperf needs the same tokenizer, and loads a local one
only from a Hugging Face hub cache layout with ``HF_HUB_OFFLINE=1``. Nothing can be
downloaded here, so this module builds both from scratch:

* a byte-level BPE tokenizer (``tokenizers`` library, ~4k vocab) trained on generated
  English-like text, so synthetic prompts tokenize at a realistic ~1-2 tokens per word
  and any text round-trips exactly;
* a small ``qwen3_moe`` config (2 layers, 8 experts, 32k context) whose ``vocab_size``
  matches the tokenizer;
* ChatML special tokens and chat template, so ``/v1/chat/completions`` works.

The output is deterministic (same bytes on every run with the same ``tokenizers``
version), idempotent (an identical existing model is left alone), and written atomically
(a temp dir renamed into place; the hub cache is filled the way ``huggingface_hub`` does:
content-addressed blobs, a snapshot dir per revision, then ``refs/main``).

CLI: ``python -m inferx_slurm.localdev.tiny_model DEST [--hf-cache DIR] [--name ORG/NAME]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from inferx_slurm.fsutil import atomic_write

DEFAULT_NAME = "inferx/tiny-moe"
VOCAB_SIZE = 4096
SEED = 20240601
MAX_POSITION_EMBEDDINGS = 32768

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2

# ChatML. Content may be a plain string or a list of OpenAI content parts; only the text
# parts are kept. Written for both jinja2 (transformers) and minijinja (Dynamo's frontend).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Common English words plus a Shakespearean flavour (aiperf draws its synthetic prompts
# from a Shakespeare corpus), so BPE learns whole-word merges for the text it will see.
_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile
river car feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch color face wood main enough plain girl usual young
ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb
sing listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide
surface deep moon island foot system busy test record boat common gold possible plane stead
dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring
yes distant fill east paint language among thou thee thy thine hath doth art shalt wilt ere
hither thither whence wherefore prithee anon forsooth methinks nay aye lord lady sir madam
good sweet noble gentle fair brave honest heaven grace duke prince queen crown sword blood
death life soul heart honour love hate night day tongue eyes hands speak stay come go hence
""".split()

_PUNCT = [".", ".", ".", ",", ",", ";", ":", "!", "?"]


_SUFFIXES = ["s", "ed", "ing", "er", "ly", "est", "ness", "ful", "eth", "est"]
_ONSETS = ["b", "bl", "br", "c", "ch", "cl", "cr", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j", "k",
           "l", "m", "n", "p", "pl", "pr", "qu", "r", "s", "sh", "sl", "sp", "st", "str", "t", "th", "tr", "v",
           "w", "wh", "y", "z", ""]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "ck", "ng", "rd", "th", "ll", "sh"]


def _lexicon(rng: random.Random) -> list[str]:
    """The fixed word list, its inflections, and pronounceable made-up words (so BPE also
    learns sub-word pieces for words it never saw whole)."""
    words = list(_WORDS)
    words += [w + rng.choice(_SUFFIXES) for w in _WORDS for _ in range(2)]
    for _ in range(3000):
        words.append("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                             for _ in range(rng.randint(1, 3))))
    return words


def _corpus(lines: int = 12000) -> list[str]:
    """Deterministic English-like training text (a fixed-seed PRNG over a fixed word list)."""
    rng = random.Random(SEED)
    lexicon = _lexicon(rng)
    common = _WORDS
    out = []
    for _ in range(lines):
        words = [rng.choice(common if rng.random() < 0.6 else lexicon) for _ in range(rng.randint(6, 24))]
        words[0] = words[0].capitalize()
        text = " ".join(words)
        if rng.random() < 0.3:
            cut = rng.randint(1, len(words) - 1)
            text = " ".join(words[:cut]) + rng.choice([",", ";", ":"]) + " " + " ".join(words[cut:])
        if rng.random() < 0.1:
            text += f" {rng.randint(0, 99999)}"
        out.append(text + rng.choice(_PUNCT[:3] + _PUNCT[-2:]))
    return out


def build_tokenizer_json(vocab_size: int = VOCAB_SIZE) -> str:
    """Train the byte-level BPE tokenizer; returns tokenizer.json text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Re-serialize through json with sorted-free, fixed formatting so bytes never depend on
    # dict iteration quirks of the Rust side.
    doc = json.loads(tok.to_str())
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def _added_tokens(tokenizer_doc: dict) -> dict[str, dict]:
    return {
        str(t["id"]): {
            "content": t["content"],
            "lstrip": t.get("lstrip", False),
            "normalized": t.get("normalized", False),
            "rstrip": t.get("rstrip", False),
            "single_word": t.get("single_word", False),
            "special": t.get("special", True),
        }
        for t in tokenizer_doc.get("added_tokens", [])
    }


def tokenizer_files() -> tuple[dict[str, bytes], dict[str, int], int]:
    """The tokenizer files every local model shares, the ids of its bos/eos/pad tokens, and
    the vocabulary size a model's embeddings need."""
    tokenizer_json = build_tokenizer_json()
    tdoc = json.loads(tokenizer_json)
    vocab = tdoc["model"]["vocab"]
    vocab_size = max(vocab.values()) + 1
    for t in tdoc.get("added_tokens", []):
        vocab_size = max(vocab_size, t["id"] + 1)
    tokenizer_config = {
        "added_tokens_decoder": _added_tokens(tdoc),
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    special_tokens_map = {
        "additional_special_tokens": [IM_START, IM_END],
        "eos_token": {"content": IM_END, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": {"content": ENDOFTEXT, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    }
    files = {
        "special_tokens_map.json": _dump(special_tokens_map),
        "tokenizer.json": tokenizer_json.encode(),
        "tokenizer_config.json": _dump(tokenizer_config),
    }
    return files, {"bos": vocab[ENDOFTEXT], "eos": vocab[IM_END], "pad": vocab[ENDOFTEXT]}, vocab_size


def _dump(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def model_files(name: str = DEFAULT_NAME) -> dict[str, bytes]:
    """Every file of the model dir, name -> exact bytes."""
    files, ids, vocab_size = tokenizer_files()

    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "_name_or_path": name,
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "num_experts": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "router_aux_loss_coef": 0.001,
        "output_router_logits": False,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "max_window_layers": 2,
        "sliding_window": None,
        "use_sliding_window": False,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.56.0",
    }
    generation_config = {
        "bos_token_id": ids["bos"],
        "eos_token_id": [ids["eos"], ids["bos"]],
        "pad_token_id": ids["pad"],
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.56.0",
    }
    readme = (
        f"# {name}\n\nA weightless test model for Dynamo's mock engine (dynamo.mocker) and aiperf.\n"
        "Generated by `python -m inferx_slurm.localdev.tiny_model`; no weights, tokenizer trained on\n"
        "generated text. Do not use for anything but plumbing tests.\n"
    )
    files.update({
        "README.md": readme.encode(),
        "config.json": _dump(config),
        "generation_config.json": _dump(generation_config),
    })
    return files


def _git_blob_sha1(data: bytes) -> str:
    """The id huggingface_hub names a non-LFS blob by (git's blob hash)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def revision_of(files: dict[str, bytes]) -> str:
    """A deterministic 40-hex 'commit' id for the snapshot."""
    h = hashlib.sha1()
    for fname in sorted(files):
        h.update(fname.encode() + b"\0" + _git_blob_sha1(files[fname]).encode() + b"\n")
    return h.hexdigest()


def _same_dir(path: Path, files: dict[str, bytes]) -> bool:
    if not path.is_dir():
        return False
    present = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if present != set(files):
        return False
    return all((path / f).read_bytes() == data for f, data in files.items())


def _dir_matches(path: Path, files: dict[str, bytes], symlinks: Optional[dict[str, str]]) -> bool:
    if symlinks is None:
        return _same_dir(path, files)
    if not path.is_dir() or {p.name for p in path.iterdir()} != set(symlinks):
        return False
    return all((path / f).is_symlink() and os.readlink(path / f) == t for f, t in symlinks.items())


def install_dir(dest: Path, files: dict[str, bytes], *, symlinks: Optional[dict[str, str]] = None) -> bool:
    """Make ``dest`` hold exactly ``files`` (or, with ``symlinks``, those links): build a sibling
    temp dir, rename it into place. Returns False when an identical dir was already there."""
    if _dir_matches(dest, files, symlinks):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    old: Optional[Path] = None
    try:
        for fname in sorted(files if symlinks is None else symlinks):
            if symlinks is None:
                (tmp / fname).write_bytes(files[fname])
                os.chmod(tmp / fname, 0o644)
            else:
                os.symlink(symlinks[fname], tmp / fname)
        os.chmod(tmp, 0o755)
        if dest.exists() or dest.is_symlink():
            # A different (older) model is there: move it aside, then swap ours in.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
        try:
            os.rename(tmp, dest)
        except OSError:
            # A concurrent maker won the race; theirs is as good as ours if it is identical.
            if _dir_matches(dest, files, symlinks):
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def repo_folder(name: str) -> str:
    """huggingface_hub's folder name for a model repo: models--ORG--NAME."""
    return "models--" + name.replace("/", "--")


def install_hf_cache(hf_cache: Path, files: dict[str, bytes], name: str = DEFAULT_NAME) -> Path:
    """Lay ``files`` out as huggingface_hub does: blobs/<sha>, snapshots/<rev>/<file> -> blob
    symlinks, refs/main = <rev>. Returns the snapshot dir."""
    repo = Path(hf_cache) / repo_folder(name)
    rev = revision_of(files)
    blobs = repo / "blobs"
    links: dict[str, str] = {}
    for fname, data in sorted(files.items()):
        sha = _git_blob_sha1(data)
        blob = blobs / sha
        if not (blob.is_file() and blob.read_bytes() == data):
            atomic_write(blob, data, mode=0o644)
        links[fname] = f"../../blobs/{sha}"
    snapshot = repo / "snapshots" / rev
    install_dir(snapshot, files, symlinks=links)
    ref = repo / "refs" / "main"
    if not (ref.is_file() and ref.read_text() == rev):
        atomic_write(ref, rev.encode(), mode=0o644)  # no trailing newline, like huggingface_hub
    return snapshot


def make_tiny_model(dest: Path, *, name: str = DEFAULT_NAME, hf_cache: Optional[Path] = None) -> Path:
    """Write the tiny model dir to ``dest`` (and, with ``hf_cache``, into that hub cache as
    ``name``). Idempotent and atomic; returns ``dest``."""
    if name.count("/") != 1 or any(not part for part in name.split("/")):
        raise ValueError(f"model name must be ORG/NAME, got {name!r}")
    dest = Path(dest)
    files = model_files(name)
    install_dir(dest, files)
    if hf_cache is not None:
        install_hf_cache(Path(hf_cache), files, name)
    return dest


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inferx_slurm.localdev.tiny_model",
        description="Write a tiny weightless MoE model dir (tokenizer + config) for Dynamo's mocker and aiperf.",
    )
    p.add_argument("dest", type=Path, help="model directory to write (created or replaced atomically)")
    p.add_argument("--hf-cache", type=Path, help="also lay the model out in this HF hub cache dir (HF_HUB_CACHE)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"hub repo id ORG/NAME (default {DEFAULT_NAME})")
    args = p.parse_args(argv)
    try:
        dest = make_tiny_model(args.dest, name=args.name, hf_cache=args.hf_cache)
    except (ValueError, OSError, ImportError) as e:
        print(f"tiny_model: {e}", file=sys.stderr)
        return 1
    print(f"model dir: {dest}")
    if args.hf_cache:
        repo = args.hf_cache / repo_folder(args.name)
        rev = (repo / "refs" / "main").read_text().strip()
        print(f"hf cache:  {repo / 'snapshots' / rev}")
        print(f"use: HF_HUB_OFFLINE=1 HF_HUB_CACHE={args.hf_cache} ... --tokenizer {args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
