#!/usr/bin/env bash
# Installs everything the local demo and the test suite need on a fresh Debian 12 machine
# (root): Slurm + munge + MariaDB, etcd, NATS, squashfs-tools, sshd, this package, Dynamo and
# aiperf in their own virtual environments, and the vLLM and SGLang engines whose parsers check
# the recipes' engine flags. Safe to re-run: each part skips what is there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

bash "$here/install_slurm.sh"

need=()
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

# Always ask pip: an import check from the repo root would find the package in the working
# tree even where its dependencies are missing. pip is quick when all is satisfied.
echo "install.sh: pip install -e $repo[test,local]"
python3 -m pip install -q -e "$repo[test,local]"

bash "$here/install_dynamo.sh"
bash "$here/install_engines.sh"
echo "install.sh: done"
