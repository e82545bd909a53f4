"""`inferx-slurm model stage SRC --dest DIR`: copy a checkpoint onto the shared filesystem, once;
`inferx-slurm model cache ls|prune`: the node-local copies jobs make of it (model.node_cache)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inferx_slurm.errors import InferxError
from inferx_slurm.commands.output import to_stderr
from inferx_slurm.sharedfs.locks import wait_notice
from inferx_slurm.sharedfs.staging import STAGE_TIMEOUT_S, StageSourceError, stage_model
from inferx_slurm.commands.argtypes import positive_int, seconds
from inferx_slurm.commands.model_cache import add_cache_parser


def run_stage(args: argparse.Namespace) -> int:
    dest = args.dest or os.environ.get("INFERX_MODEL_DIR")
    if not dest:
        raise StageSourceError("--dest DIR is required (or set INFERX_MODEL_DIR)")
    try:
        res = stage_model(
            args.src,
            Path(dest),
            workers=args.workers,
            checksum=args.checksum,
            timeout_s=args.timeout if args.timeout is not None else STAGE_TIMEOUT_S,
            name=args.name,
            on_wait=wait_notice("another stager", to_stderr),
            log=None if args.quiet else to_stderr,
        )
    except OSError as exc:
        raise InferxError(f"staging {args.src} into {dest} failed: {exc}") from None
    if args.json:
        print(res.model_dump_json())
    else:
        if res.reused:
            to_stderr(f"{res.source}: already staged")
        else:
            rate = res.bytes_copied / res.seconds / 1e6 if res.seconds > 0 else 0.0
            to_stderr(
                f"{res.source}: {res.files_copied} files copied ({res.bytes_copied / 1e9:.2f} GB, "
                f"{rate:.0f} MB/s), {res.files_skipped} already there"
            )
        print(res.path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="manage model checkpoints on the shared filesystem and the nodes' local caches",
        description="Manage model checkpoints staged on the shared filesystem for offline serving, and the "
        "copies jobs keep on each node's local disk (model.node_cache).",
    )
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", parser_class=type(p))
    msub.required = True
    st = msub.add_parser(
        "stage",
        help="copy a checkpoint once into the shared model dir",
        description=(
            "Copy SRC into DIR/NAME and print the staged path; serve it with HF_HUB_OFFLINE=1. "
            "SRC is a checkpoint directory, an HF cache snapshot, or a Hub repo id ORG/NAME[@REV] "
            "(needs huggingface_hub and network access). Safe to run from many processes and nodes "
            "at once; re-running on a complete stage is near-instant and after an interrupted one "
            "copies only what is missing. On Lustre the directory is striped before copying."
        ),
    )
    st.add_argument("src", metavar="SRC", help="checkpoint directory, HF cache snapshot, or ORG/NAME[@REV]")
    st.add_argument("--dest", metavar="DIR", default=None, help="shared model dir (default: $INFERX_MODEL_DIR)")
    st.add_argument("--name", default=None, help="directory name under DIR (default: derived from SRC)")
    st.add_argument("--json", action="store_true", help="print the result as JSON")
    st.add_argument("--workers", type=positive_int, default=8, metavar="N", help="parallel copies (default 8)")
    st.add_argument("--checksum", action="store_true", help="record a sha256 per file in the manifest")
    st.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"how long to wait for another process staging the same model (default {STAGE_TIMEOUT_S:.0f})",
    )
    st.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    st.set_defaults(func=run_stage)
    add_cache_parser(msub)
