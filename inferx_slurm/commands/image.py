"""`inferx-slurm image import URI`: put a container image on the shared filesystem, once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inferx_slurm.errors import InferxError
from inferx_slurm.sharedfs.images import IMPORT_TIMEOUT_S, import_image
from inferx_slurm.commands.output import to_stderr
from inferx_slurm.sharedfs.locks import wait_notice
from inferx_slurm.commands.argtypes import seconds


def run_import(args: argparse.Namespace) -> int:
    dest = args.dest or os.environ.get("INFERX_IMAGE_DIR") or "images"
    try:
        res = import_image(
            args.uri,
            Path(dest),
            timeout_s=args.timeout if args.timeout is not None else IMPORT_TIMEOUT_S,
            enroot=args.enroot,
            on_wait=wait_notice("another import", to_stderr),
            log=None if args.quiet else to_stderr,
        )
    except OSError as exc:
        raise InferxError(f"importing {args.uri} into {dest} failed: {exc}") from None
    if args.json:
        print(res.model_dump_json())
    else:
        what = f"imported in {res.seconds:.1f}s" if res.imported else "already imported"
        to_stderr(f"{res.uri}: {what}")
        print(res.path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "image",
        help="manage container images on the shared filesystem",
        description="Manage container images (squashfs files for pyxis/enroot) on the shared filesystem.",
    )
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", parser_class=type(p))
    isub.required = True
    imp = isub.add_parser(
        "import",
        help="import an image once into the shared image dir",
        description=(
            "Import URI with 'enroot import' into DIR under a deterministic name and print its path. "
            "Any number of processes and nodes may run this at once: one imports, the others wait "
            "and reuse the file. A file under the final name is always complete. Accepts "
            "nvcr.io/ORG/IMAGE:TAG, docker://REGISTRY#IMAGE:TAG, Docker Hub names (nginx:1.27.4), "
            "@sha256:DIGEST pins, and local .sqsh paths (checked and printed as they are)."
        ),
    )
    imp.add_argument("uri", metavar="URI", help="image reference or local .sqsh path")
    imp.add_argument(
        "--dest", metavar="DIR", default=None, help="shared image dir (default: $INFERX_IMAGE_DIR, else ./images)"
    )
    imp.add_argument("--json", action="store_true", help="print the result as JSON: path, uri, imported, seconds")
    imp.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"how long to wait for another process importing the same image (default {IMPORT_TIMEOUT_S:.0f})",
    )
    imp.add_argument("--enroot", default="enroot", metavar="PATH", help="enroot executable (default: enroot on PATH)")
    imp.add_argument("-q", "--quiet", action="store_true", help="do not echo enroot's output")
    imp.set_defaults(func=run_import)
