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
