#!/usr/bin/env bash
# Installs the Debian packages the local Slurm cluster needs (Slurm 22.05 on
# Debian 12). Safe to re-run: it only touches apt when a binary is missing, and
# never starts services (inferx_slurm.localdev runs its own daemons).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install_slurm.sh: must run as root (apt-get install needs it)" >&2
    exit 1
fi

# binary -> package that provides it
declare -A wanted=(
    [slurmctld]=slurmctld
    [slurmd]=slurmd
    [sbatch]=slurm-client
    [slurmdbd]=slurmdbd
    [munged]=munge
    [mariadbd]=mariadb-server
    [unshare]=util-linux
)

missing=()
for bin in "${!wanted[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$bin" ]]; then
        missing+=("${wanted[$bin]}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install_slurm.sh: all Slurm/munge/MariaDB binaries present, nothing to do"
    exit 0
fi

# slurm-wlm pulls slurmctld+slurmd+client; list the rest explicitly.
pkgs=(slurm-wlm "${missing[@]}")
echo "install_slurm.sh: installing ${pkgs[*]}"

export DEBIAN_FRONTEND=noninteractive
# Debian's postinst scripts try to start services; in containers without an init
# system that fails the install, so forbid service starts for the duration.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

# Other tools may be running apt concurrently: wait for the dpkg lock instead
# of failing immediately.
lock_wait=(-o DPkg::Lock::Timeout=600)
apt-get "${lock_wait[@]}" update -q
apt-get "${lock_wait[@]}" install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${pkgs[@]}"
echo "install_slurm.sh: done"
