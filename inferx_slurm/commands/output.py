"""Where the command line prints what the library reports: results on stdout, progress and
warnings on stderr (so stdout stays the command's result)."""

from __future__ import annotations

import sys

from inferx_slurm.reporting import Callbacks


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def to_stdout(message: str) -> None:
    print(message, flush=True)


def stderr_reporter() -> Callbacks:
    """Progress and warnings on stderr: for commands whose stdout is their result."""
    return Callbacks(on_info=to_stderr, on_warning=to_stderr)


def stdout_reporter() -> Callbacks:
    """Progress on stdout, warnings on stderr: for commands whose output is the progress (ci)."""
    return Callbacks(on_info=to_stdout, on_warning=to_stderr)
