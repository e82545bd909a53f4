"""`inferx-slurm model cache ls|prune`: see and clean the node-local weight caches (model.node_cache).

A node's cache is on that node's own disk: run these on the node (``srun -w NODE inferx-slurm
model cache ls``), or, where the cache dir names ``{node}`` (nodes sharing one disk), from
anywhere that sees it, naming the nodes with ``--node``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.node_cache import NODE_PLACEHOLDER, cap_bytes, expand_dir, format_bytes, parse_percent, parse_size
from inferx_slurm.recipe.site import load_site
from inferx_slurm.sharedfs.node_cache import prune
from inferx_slurm.sharedfs.node_cache_index import entries
from inferx_slurm.commands.argtypes import add_site_arg


def cache_dirs(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], Optional[str]]:
    """(node, dir) for every cache asked about, and the cap in force (site's, unless --cap)."""
    site = load_site(args.site)
    nc = site.model.node_cache if site is not None else None
    template = args.dir or (nc.dir if nc is not None else None)
    if not template:
        raise RecipeError("--dir", None, "name the node cache dir (or set model.node_cache.dir in the site file)")
    cap = args.cap or (str(nc.cap) if nc is not None else None)
    if NODE_PLACEHOLDER in template:
        if not args.node:
            raise RecipeError("--node", None, f"{template} has a cache per node: name the nodes with --node NAME")
        return [(n, Path(expand_dir(template, n))) for n in args.node], cap
    if args.node and args.node != [socket.gethostname()]:
        raise RecipeError("--node", ",".join(args.node), f"{template} is on each node's own disk: run this on the node "
                          "(srun -w NODE inferx-slurm model cache ...)")
    return [(socket.gethostname(), Path(template))], cap


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


def run_ls(args: argparse.Namespace) -> int:
    dirs, cap = cache_dirs(args)
    docs = []
    for node, root in dirs:
        ents = entries(root)
        disk = shutil.disk_usage(root) if root.is_dir() else None
        doc = {"node": node, "dir": str(root), "exists": root.is_dir(), "cap": cap,
               "cap_bytes": cap_bytes(cap, disk.total) if cap and disk else None,
               "disk_bytes": disk.total if disk else None, "free_bytes": disk.free if disk else None,
               "used_bytes": sum(e.bytes for e in ents), "models": [e.to_json() for e in ents]}
        docs.append(doc)
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for d in docs:
        if not d["exists"]:
            print(f"{d['node']}: {d['dir']}: no cache there yet")
            continue
        limit = f" of cap {d['cap']} = {format_bytes(d['cap_bytes'])}" if d["cap_bytes"] else ""
        print(f"{d['node']}: {d['dir']}: {format_bytes(d['used_bytes'])}{limit}; disk {format_bytes(d['disk_bytes'])}, "
              f"{format_bytes(d['free_bytes'])} free")
        if not d["models"]:
            print("  (empty)")
        for m in d["models"]:  # least recently served first: the next to be evicted
            state = "complete" if m["complete"] else f"partial ({format_bytes(m['bytes'])} of {format_bytes(m['total_bytes'])})"
            pins = f", in use by {', '.join(map(str, m['pinned_by']))}" if m["pinned_by"] else ""
            print(f"  {m['name']:<40} {format_bytes(m['total_bytes']):>10}  served {_when(m['last_served'])}  {state}{pins}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    dirs, cap = cache_dirs(args)
    cap = args.cap  # prune to a cap only when asked: the site's cap is what jobs make room under
    out = []
    for node, root in dirs:
        res = prune(root, names=args.model or None, everything=args.all, cap=cap)
        out.append({"node": node, "dir": str(root), **res.model_dump()})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for d in out:
        print(f"{d['node']}: {d['dir']}: evicted {len(d['evicted'])} ({format_bytes(d['freed_bytes'])})"
              + (f": {', '.join(d['evicted'])}" if d["evicted"] else ""))
        if d["kept"]:
            print(f"  kept, in use by a running job or being copied: {', '.join(d['kept'])}")
    return 0


def cap_arg(text: str) -> str:
    try:
        if parse_percent(text) is None:
            parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_cache_parser(msub: argparse._SubParsersAction) -> None:
    c = msub.add_parser("cache", help="see and clean the node-local weight caches (model.node_cache)",
                        description="See and clean the copies of staged models that jobs keep on each node's local "
                        "disk (model.node_cache). A node's cache is on its own disk: run these on the node (srun -w "
                        "NODE inferx-slurm model cache ls), or, where the cache dir names {node}, from anywhere that "
                        "sees it, naming the nodes with --node.")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=type(c))
    csub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", default=None, help="the cache dir (default: the site's model.node_cache.dir)")
        p.add_argument("--node", action="append", default=[], metavar="NAME",
                       help="a node whose cache to use, where the dir names {node} (repeat for several)")
        p.add_argument("--json", action="store_true", help="print JSON")
        add_site_arg(p)

    ls = csub.add_parser("ls", help="list the cached models, least recently served (next evicted) first")
    common(ls)
    ls.add_argument("--cap", type=cap_arg, default=None, help="show usage against this cap (default: the site's)")
    ls.set_defaults(func=run_ls)
    pr = csub.add_parser("prune", help="delete interrupted copies, and models no running job uses",
                         description="Delete the leftovers of interrupted copies, then the models named with --model, "
                         "all of them (--all), or the least recently served until the cache is within --cap. A model "
                         "a running job uses, or one being copied, is never deleted.")
    common(pr)
    what = pr.add_mutually_exclusive_group()
    what.add_argument("--model", action="append", default=[], metavar="NAME", help="a cached model to delete (repeat)")
    what.add_argument("--all", action="store_true", help="every model no running job uses")
    pr.add_argument("--cap", type=cap_arg, default=None, help="evict least recently served until within this size or percent")
    pr.set_defaults(func=run_prune)
