#!/usr/bin/env bash
# Installs the serving engines whose own argument parsers check every engine command the
# recipes render (tests/test_engine_parsers.py), each in its own virtual environment:
#
#   /opt/vllm-venv     vllm==0.31.0 + ai-dynamo==1.6.1 (the versions ai-dynamo[vllm]==1.6.1
#                      pins): `python -m dynamo.vllm` and `vllm serve`
#   /opt/sglang-venv   sglang==0.5.21 (what ai-dynamo[sglang]==1.6.1 pins) + ai-dynamo==1.6.1:
#                      `python -m sglang.launch_server` and `python -m dynamo.sglang`
#
# Only the parsers run here (no GPU is needed: vLLM is pointed at its CPU platform), but the
# packages are the real ones with their CUDA dependencies, several GB each.
#
# ai-dynamo goes in with --no-deps, as in install_dynamo.sh (its `aisimulate` dependency cannot
# be built offline-from-PyPI); the worker modules' parsers need only the engine beside it.
# torch must be the build the engine pins from PyPI: a site-local CPU-only torch of the same
# version breaks torchvision ("operator torchvision::nms does not exist"), so the torch
# install bypasses pip's site configuration when that happens.
#
# SGLang 0.5.21 requires cuda-tile==1.6.0rc5, whose PyPI release is a stub that fetches the
# real wheel from pypi.nvidia.com at install time. Where that host cannot be reached, SGLang's
# other requirements are installed and SGLang itself with --no-deps (its parser does not use
# cuda-tile); where even that fails, the reason is written to $SGLANG_VENV/NOT_INSTALLED and
# the SGLang conformance tests report it as their skip reason.
#
# Safe to re-run: each part checks first. Environment: VLLM_VENV, SGLANG_VENV, PYTHON.
# Flags: --no-sglang, --no-vllm.
set -euo pipefail

VLLM_VENV="${VLLM_VENV:-/opt/vllm-venv}"
SGLANG_VENV="${SGLANG_VENV:-/opt/sglang-venv}"
PYTHON="${PYTHON:-python3}"
VLLM_VERSION=0.31.0
SGLANG_VERSION=0.5.21
DYNAMO_VERSION=1.6.1

do_vllm=1
do_sglang=1
for arg in "$@"; do
    case "$arg" in
        --no-vllm) do_vllm=0 ;;
        --no-sglang) do_sglang=0 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "install_engines.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

say() { echo "install_engines.sh: $*"; }

make_venv() {
    local dir=$1
    if [[ -x "$dir/bin/python" ]]; then
        return
    fi
    say "creating venv $dir with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

dist_version() {  # venv dist -> installed version or nothing
    "$1/bin/python" -c '
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass' "$2" 2>/dev/null || true
}

pinned() {  # venv dist dep -> the version dist pins dep to (==X), or nothing
    "$1/bin/python" -c '
import re, sys
from importlib.metadata import requires
for r in requires(sys.argv[1]) or []:
    m = re.match(r"^" + re.escape(sys.argv[2]) + r"\s*==\s*([^;,\s]+)\s*(;|$)", r)
    if m:
        print(m.group(1)); break' "$2" "$3" 2>/dev/null || true
}

pip_public() {  # pip install from PyPI alone, ignoring site-local wheel dirs and indexes
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        "$@" --index-url https://pypi.org/simple
}

torch_fix() {  # venv engine: reinstall torch at the engine's pin from PyPI if torchvision breaks
    local venv=$1 engine=$2
    if "$venv/bin/python" -c 'import torchvision' >/dev/null 2>&1; then
        return
    fi
    local pin
    pin=$(pinned "$venv" "$engine" torch)
    say "torchvision does not import with torch $(dist_version "$venv" torch); installing torch==${pin:?no torch pin in $engine} from PyPI"
    "$venv/bin/python" -m pip uninstall -y -q torch
    pip_public "$venv/bin/python" -m pip install -q "torch==$pin"
    "$venv/bin/python" -c 'import torchvision'
}

dynamo_into() {
    local venv=$1
    if [[ "$(dist_version "$venv" ai-dynamo)" != "$DYNAMO_VERSION" || "$(dist_version "$venv" ai-dynamo-runtime)" != "$DYNAMO_VERSION" ]]; then
        say "pip install --no-deps ai-dynamo==$DYNAMO_VERSION ai-dynamo-runtime==$DYNAMO_VERSION into $venv"
        "$venv/bin/python" -m pip install -q --no-deps "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
    fi
}

vllm_smoke() {
    VLLM_TARGET_DEVICE=cpu "$VLLM_VENV/bin/python" -c '
import torchvision
from dynamo.vllm.args import parse_args
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.engine.arg_utils import AsyncEngineArgs' >/dev/null 2>&1
}

if [[ $do_vllm -eq 1 ]]; then
    if [[ "$(dist_version "$VLLM_VENV" vllm)" == "$VLLM_VERSION" ]] && vllm_smoke; then
        say "vllm $VLLM_VERSION + ai-dynamo $DYNAMO_VERSION already in $VLLM_VENV"
    else
        make_venv "$VLLM_VENV"
        if [[ "$(dist_version "$VLLM_VENV" vllm)" != "$VLLM_VERSION" ]]; then
            say "pip install vllm==$VLLM_VERSION into $VLLM_VENV (several GB, a few minutes)"
            "$VLLM_VENV/bin/python" -m pip install -q "vllm==$VLLM_VERSION"
        fi
        torch_fix "$VLLM_VENV" vllm
        dynamo_into "$VLLM_VENV"
        if ! vllm_smoke; then
            echo "install_engines.sh: the vLLM parsers do not import; try: VLLM_TARGET_DEVICE=cpu $VLLM_VENV/bin/python -c 'import dynamo.vllm.args'" >&2
            exit 1
        fi
        say "vllm $VLLM_VERSION + ai-dynamo $DYNAMO_VERSION OK in $VLLM_VENV"
    fi
fi

sglang_smoke() {
    "$SGLANG_VENV/bin/python" -c '
import argparse
from sglang.srt.server_args import ServerArgs
ServerArgs.add_cli_args(argparse.ArgumentParser())
import dynamo.sglang.args' >/dev/null 2>&1
}

if [[ $do_sglang -eq 1 ]]; then
    if [[ "$(dist_version "$SGLANG_VENV" sglang)" == "$SGLANG_VERSION" ]] && sglang_smoke; then
        say "sglang $SGLANG_VERSION + ai-dynamo $DYNAMO_VERSION already in $SGLANG_VENV"
    else
        make_venv "$SGLANG_VENV"
        rm -f "$SGLANG_VENV/NOT_INSTALLED"
        log="$SGLANG_VENV/install.log"
        reason=""
        if [[ "$(dist_version "$SGLANG_VENV" sglang)" != "$SGLANG_VERSION" ]]; then
            say "pip install sglang==$SGLANG_VERSION into $SGLANG_VENV (several GB, a few minutes; log: $log)"
            if ! pip_public "$SGLANG_VENV/bin/python" -m pip install "sglang==$SGLANG_VERSION" >"$log" 2>&1; then
                # Its requirements but the one whose stub needs pypi.nvidia.com, then sglang itself.
                say "sglang's full install failed ($(grep -m1 -oE 'Encountered error while generating package metadata|No matching distribution found for [^ ]+' "$log" || echo 'see log')); installing its requirements without cuda-tile"
                "$SGLANG_VENV/bin/python" -m pip download -q --no-deps -d "$SGLANG_VENV/dl" "sglang==$SGLANG_VERSION" >>"$log" 2>&1 || true
                "$SGLANG_VENV/bin/python" - "$SGLANG_VENV"/dl/sglang-*.whl >"$SGLANG_VENV/requirements.txt" 2>>"$log" <<'EOF' || true
import sys, zipfile
from email.parser import Parser
whl = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
for req in Parser().parsestr(whl.read(meta).decode()).get_all("Requires-Dist") or []:
    spec, _, marker = req.partition(";")
    if "extra ==" in marker or spec.strip().startswith("cuda-tile"):
        continue
    print(req.strip())
EOF
                if ! { pip_public "$SGLANG_VENV/bin/python" -m pip install -r "$SGLANG_VENV/requirements.txt" >>"$log" 2>&1 &&
                       pip_public "$SGLANG_VENV/bin/python" -m pip install --no-deps "sglang==$SGLANG_VERSION" >>"$log" 2>&1; }; then
                    reason="sglang==$SGLANG_VERSION does not install here: $(grep -m1 -E '^ERROR|error:' "$log" || echo "see $log")"
                fi
            fi
        fi
        if [[ -z "$reason" ]]; then
            torch_fix "$SGLANG_VENV" sglang >>"$log" 2>&1 || reason="torch for sglang does not import: see $log"
        fi
        [[ -z "$reason" ]] && dynamo_into "$SGLANG_VENV"
        if [[ -z "$reason" ]] && ! sglang_smoke; then
            reason="sglang's parser does not import: $("$SGLANG_VENV/bin/python" -c 'import sglang.srt.server_args, dynamo.sglang.args' 2>&1 | tail -1)"
        fi
        if [[ -n "$reason" ]]; then
            # Not fatal: the vLLM parsers still check every vLLM recipe; the SGLang tests skip with this.
            echo "$reason" >"$SGLANG_VENV/NOT_INSTALLED"
            say "SGLang parser unavailable: $reason"
        else
            say "sglang $SGLANG_VERSION + ai-dynamo $DYNAMO_VERSION OK in $SGLANG_VENV"
        fi
    fi
fi
say "done"
