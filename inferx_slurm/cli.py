"""The `inferx-slurm` command line. Each subcommand lives in `inferx_slurm/commands/` and
registers itself; this module only dispatches and turns user errors into one clear line."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Optional, Sequence

from inferx_slurm import commands
from inferx_slurm.version import __version__
from inferx_slurm.errors import InferxError


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 on bad usage already; keep its message but make it one line with a hint.
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="inferx-slurm",
        description="Plan, launch and benchmark disaggregated LLM serving (Dynamo prefill/decode) on Slurm.",
    )
    parser.add_argument("--version", action="version", version=f"inferx-slurm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register:
            register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InferxError as e:
        print(f"inferx-slurm {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"inferx-slurm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
