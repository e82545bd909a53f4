#!/usr/bin/env bash
# Puts the discovery servers a deployment's infra step runs (etcd, nats-server) into DIR on the
# shared filesystem, for recipes (or a site) to name as frontend.infra_bin_dir. Serving images
# such as vllm/vllm-openai ship neither, so the infra step runs them on the host from DIR.
#
#   bash setup_scripts/provision_infra_bins.sh DIR
#
# Run it once per CPU architecture, on a node of that architecture (GB200 trays are aarch64):
# it takes the binaries from this machine's PATH, installing Debian's etcd-server and
# nats-server with apt where they are missing, and checks each runs here. Safe to re-run;
# binaries are written under a temporary name and renamed, so a job never sees half a file.
set -euo pipefail
dest="${1:?usage: provision_infra_bins.sh DIR (a shared dir the compute nodes mount)}"
mkdir -p "$dest"
need=()
for b in etcd nats-server; do
    command -v "$b" >/dev/null || need+=("$b")
done
if ((${#need[@]})); then
    echo "provision_infra_bins.sh: installing ${need[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server nats-server >/dev/null
fi
for b in etcd nats-server; do
    src="$(command -v "$b")"
    "$src" --version >/dev/null 2>&1 || { echo "provision_infra_bins.sh: $src does not run here" >&2; exit 1; }
    tmp="$dest/.$b.$$"
    cp "$src" "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$dest/$b"
    echo "provision_infra_bins.sh: $dest/$b ($(uname -m)): $("$dest/$b" --version 2>&1 | head -1)"
done
