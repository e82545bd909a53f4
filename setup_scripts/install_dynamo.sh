#!/usr/bin/env bash
# Installs NVIDIA Dynamo (frontend + CPU mock engine) and the aiperf benchmark client, each in
# its own virtual environment, so neither touches the system python the project runs in:
#
#   /opt/dynamo-venv   ai-dynamo==1.6.1 + ai-dynamo-runtime==1.6.1, run as
#                      /opt/dynamo-venv/bin/python -m dynamo.frontend | dynamo.mocker
#   /opt/aiperf-venv   aiperf==0.13.0, run as /opt/aiperf-venv/bin/aiperf
#
# ai-dynamo is installed with --no-deps: its hard dependency `aisimulate` cannot be built
# here (its sdist downloads a wheel from a host we cannot reach), and `kubernetes`/`redis`
# are only needed for the Kubernetes/Redis features. The frontend and the mocker run
# without them; we install the runtime deps they do import, with ai-dynamo-runtime's pydantic
# pin (<=2.13.5). aiperf gets its own venv: it pulls ~140 packages (pandas, scipy, dash,
# textual, ...) and pins pyzmq~=26.4, which dynamo does not need.
#
# Safe to re-run: every step checks first and prints what it does or skips.
# Environment: DYNAMO_VENV, AIPERF_VENV (venv dirs), PYTHON (interpreter that creates them,
# >= 3.10), DYNAMO_VERSION, AIPERF_VERSION. Flags: --no-aiperf, --no-dynamo.
set -euo pipefail

DYNAMO_VENV="${DYNAMO_VENV:-/opt/dynamo-venv}"
AIPERF_VENV="${AIPERF_VENV:-/opt/aiperf-venv}"
PYTHON="${PYTHON:-python3}"
DYNAMO_VERSION="${DYNAMO_VERSION:-1.6.1}"
AIPERF_VERSION="${AIPERF_VERSION:-0.13.0}"

do_dynamo=1
do_aiperf=1
for arg in "$@"; do
    case "$arg" in
        --no-aiperf) do_aiperf=0 ;;
        --no-dynamo) do_dynamo=0 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install_dynamo.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

say() { echo "install_dynamo.sh: $*"; }

# The runtime deps dynamo.frontend / dynamo.mocker import (ai-dynamo's Requires-Dist minus
# aisimulate, kubernetes, redis; certifi is left at what PyPI has).
DYNAMO_DEPS=(
    "aiohttp>=3.14.3,<4"
    "msgspec>=0.19"
    "prometheus-client>=0.23.1,<1"
    "pyzmq>=26"
    "tqdm>=4"
    "transformers>=4.56"
    "zstandard>=0.23,<1"
    "uvloop>=0.21"
    "pydantic>=2.10.6,<=2.13.5"
    "typing-extensions>=4.10"
    "certifi"
)

make_venv() {
    local dir=$1
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
        say "venv $dir exists"
        return
    fi
    if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
        echo "install_dynamo.sh: $PYTHON is older than 3.10 (or missing); set PYTHON" >&2
        exit 1
    fi
    say "creating venv $dir with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

dist_version() {  # venv dist -> prints installed version or nothing
    "$1/bin/python" - "$2" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

dynamo_smoke() {  # both entry points parse their CLI and the pydantic pin holds
    "$DYNAMO_VENV/bin/python" -m dynamo.frontend --help >/dev/null 2>&1 &&
        "$DYNAMO_VENV/bin/python" -m dynamo.mocker --help >/dev/null 2>&1 &&
        "$DYNAMO_VENV/bin/python" -c '
from importlib.metadata import version
major, minor, patch = (int(x) for x in version("pydantic").split(".")[:3])
assert (2, 10, 6) <= (major, minor, patch) <= (2, 13, 5)
' >/dev/null 2>&1
}

if [[ $do_dynamo -eq 1 ]]; then
    make_venv "$DYNAMO_VENV"
    have_fw=$(dist_version "$DYNAMO_VENV" ai-dynamo)
    have_rt=$(dist_version "$DYNAMO_VENV" ai-dynamo-runtime)
    if [[ "$have_fw" == "$DYNAMO_VERSION" && "$have_rt" == "$DYNAMO_VERSION" ]]; then
        say "ai-dynamo $DYNAMO_VERSION already installed in $DYNAMO_VENV"
    else
        say "pip install --no-deps ai-dynamo==$DYNAMO_VERSION ai-dynamo-runtime==$DYNAMO_VERSION (had: ${have_fw:-none}/${have_rt:-none})"
        "$DYNAMO_VENV/bin/python" -m pip install -q --no-deps \
            "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
    fi
    if dynamo_smoke; then
        say "dynamo.frontend and dynamo.mocker import fine, nothing to add"
    else
        say "pip install dynamo runtime deps: ${DYNAMO_DEPS[*]}"
        "$DYNAMO_VENV/bin/python" -m pip install -q "${DYNAMO_DEPS[@]}"
        if ! dynamo_smoke; then
            echo "install_dynamo.sh: dynamo still fails to start; try: $DYNAMO_VENV/bin/python -m dynamo.mocker --help" >&2
            exit 1
        fi
        say "dynamo.frontend and dynamo.mocker OK"
    fi
fi

if [[ $do_aiperf -eq 1 ]]; then
    have_ap=""
    if [[ -x "$AIPERF_VENV/bin/aiperf" ]]; then
        have_ap=$(dist_version "$AIPERF_VENV" aiperf)
    fi
    if [[ "$have_ap" == "$AIPERF_VERSION" ]] && "$AIPERF_VENV/bin/aiperf" --version >/dev/null 2>&1; then
        say "aiperf $AIPERF_VERSION already installed in $AIPERF_VENV"
    else
        make_venv "$AIPERF_VENV"
        say "pip install aiperf==$AIPERF_VERSION into $AIPERF_VENV (had: ${have_ap:-none}; ~1.2 GB, a few minutes)"
        "$AIPERF_VENV/bin/python" -m pip install -q "aiperf==$AIPERF_VERSION"
        "$AIPERF_VENV/bin/aiperf" --version >/dev/null
        say "aiperf OK: $AIPERF_VENV/bin/aiperf"
    fi
fi

done_msg=()
[[ $do_dynamo -eq 1 ]] && done_msg+=("dynamo: $DYNAMO_VENV/bin/python -m dynamo.frontend|dynamo.mocker")
[[ $do_aiperf -eq 1 ]] && done_msg+=("aiperf: $AIPERF_VENV/bin/aiperf")
say "done${done_msg[*]:+ (}$(IFS=';'; echo "${done_msg[*]}")${done_msg[*]:+)}"
