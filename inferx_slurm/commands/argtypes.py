"""argparse value types shared by the subcommands: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", default=None, metavar="FILE",
                   help="site settings file (default $INFERX_SITE, else ~/.config/inferx-slurm/site.yaml; 'none' for none)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--eval", action="store_true", help="run the recipe's eval: tasks after the benchmark points, on the same engines")
    g.add_argument("--eval-only", action="store_true", help="run the recipe's eval: tasks alone, no benchmark point")


def eval_sets(args: argparse.Namespace) -> dict[str, str]:
    """The recipe override --eval or --eval-only asks for."""
    return {"eval.run": "only"} if args.eval_only else {"eval.run": "after"} if args.eval else {}
