"""`inferx-slurm local-cluster up|down|status`: a real Slurm cluster of N nodes on this machine."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from inferx_slurm.errors import InferxError


def run(args: argparse.Namespace) -> int:
    from inferx_slurm import localdev as lc

    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.action == "up" and importlib.util.find_spec("tokenizers") is None:
        # Checked before any daemon starts: the tiny model's tokenizer is built after the cluster is up.
        raise InferxError("the local cluster's tiny model needs the 'tokenizers' package: pip install 'inferx-slurm[local]'")
    try:
        if args.action == "up":
            info = lc.up(nodes=args.nodes, gpus_per_node=args.gpus_per_node, state_dir=state_dir, gpu_vendor=args.gpu_vendor)
            model = ensure_tiny_model(info.state_dir)
        elif args.action == "down":
            lc.down(state_dir)
            info = lc.status(state_dir)
            model = None
        else:
            info = lc.status(state_dir)
            model = None
    except (lc.ClusterError, ValueError, PermissionError) as e:
        raise InferxError(str(e)) from None
    if args.json:
        print(json.dumps(info.model_dump(mode="json"), indent=2))
        return 0
    print(f"local cluster: {'up' if info.up else 'down'} ({info.state_dir})")
    if info.up:
        states = ", ".join(f"{n}={s}" for n, s in info.node_states.items())
        print(f"  {info.nodes} nodes x {info.gpus_per_node} {info.gpu_vendor} GPUs, partition '{info.partition}': {states}")
        print(f"  export SLURM_CONF={info.slurm_conf}")
    if model:
        print(f"  tiny model in HF cache: {model}")
    return 0


def ensure_tiny_model(state_dir: Path) -> Path:
    """The engines and the benchmark client share one offline HF cache: the weightless model
    for the mock engine, the tiny Llama with weights for the real one."""
    from inferx_slurm.localdev.tiny_llama import make_tiny_llama
    from inferx_slurm.localdev.tiny_model import make_tiny_model

    cache = state_dir / "hf-cache"
    make_tiny_model(state_dir / "models" / "tiny-moe", hf_cache=cache)
    make_tiny_llama(state_dir / "models" / "tiny-llama", hf_cache=cache)
    return cache


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "local-cluster",
        help="start/stop a real local Slurm cluster with fake GPUs",
        description="Run slurmctld, slurmdbd and N slurmd nodes on this machine (root; installs slurm-wlm, munge, mariadb if missing).",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--gpus-per-node", type=int, default=4, help="fake GPUs per node (default 4)")
    p.add_argument("--gpu-vendor", choices=["nvidia", "amd"], default="nvidia",
                   help="amd: Slurm binds the fake GPUs through ROCR_VISIBLE_DEVICES, as on AMD nodes (recipes use profile local-amd)")
    p.add_argument("--state-dir", help="where config, logs and state live (default $INFERX_LOCAL_CLUSTER_DIR or /var/tmp/inferx-local-cluster)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
