"""`inferx-slurm profiles`: the platform environment profiles a recipe can name."""

from __future__ import annotations

import argparse

from inferx_slurm.recipe.profiles import PROFILES


def run(args: argparse.Namespace) -> int:
    for p in PROFILES.values():
        print(f"{p.name:<12} {p.gpus_per_node} GPUs/node  {p.description}")
        if args.verbose:
            if p.gpu_memory_gb:
                native = ", ".join(sorted(p.native_formats)) if p.native_formats is not None else "all (held as stored)"
                weight_only = f"; MoE weight-only: {', '.join(sorted(p.moe_weight_only_formats))}" if p.moe_weight_only_formats else ""
                print(f"{'':14}{p.gpu_memory_gb:g} GB a GPU; native formats: {native}{weight_only}")
            for k, v in p.env.items():
                print(f"{'':14}{k}={v}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list environment profiles", description="List platform profiles and (with -v) their environment.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)
