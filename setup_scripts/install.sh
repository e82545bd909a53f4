#!/usr/bin/env bash
# Installs what the local demo needs on a fresh Debian 12 machine (root): Slurm + munge +
# MariaDB, etcd, NATS, squashfs-tools, sshd, this package, Dynamo (frontend + mock engine) and
# aiperf in their own virtual environments. The serving engines (vLLM on CPU, SGLang's parser)
# are not part of it: `install_engines.sh` adds them, for the tests and `demo.sh --real-engine`.
# Safe to re-run: each part skips what is there.
#
# The Debian packages and the Python environments do not depend on each other, so they are
# installed side by side; each part's output goes to its own log and is shown if it fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
logs="${INFERX_INSTALL_LOGS:-/var/tmp/inferx-install}"
mkdir -p "$logs"

debian() {
    bash "$here/install_slurm.sh"
    local need=()
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || need+=(nats-server)
    command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
    [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
    if [[ ${#need[@]} -gt 0 ]]; then
        echo "install.sh: apt-get install ${need[*]}"
        apt-get update -qq
        # policy-rc.d keeps Debian's postinst from starting system services we do not use.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        rm -f /usr/sbin/policy-rc.d
    fi
}

package() {
    # Always ask pip: an import check from the repo root would find the package in the working
    # tree even where its dependencies are missing. pip is quick when all is satisfied.
    echo "install.sh: pip install -e $repo[test,local]"
    python3 -m pip install -q -e "$repo[test,local]"
}

pids=() names=()
start() {  # name function-or-command...
    local name=$1; shift
    ( "$@" ) >"$logs/$name.log" 2>&1 &
    pids+=($!) names+=("$name")
}
t0=$SECONDS
start debian debian
start package package
start dynamo bash "$here/install_dynamo.sh" --no-aiperf
start aiperf bash "$here/install_dynamo.sh" --no-dynamo
failed=0
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
        echo "install.sh: ${names[$i]}: $(tail -1 "$logs/${names[$i]}.log")"
    else
        failed=1
        echo "install.sh: ${names[$i]} FAILED; its log ($logs/${names[$i]}.log) ends:" >&2
        tail -30 "$logs/${names[$i]}.log" >&2
    fi
done
[[ $failed -eq 0 ]] || exit 1
echo "install.sh: done in $((SECONDS - t0)) s"
