"""What submitit runs in the allocation: the first steps (runtime/start.py; already started
when the batch script went through runtime/boot.py), then the driver.

Its own module, apart from both: the first steps start before anything heavy is imported, and
the driver, which adopts them, imports start.py's types without importing this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferx_slurm.runtime.start import take_started
from inferx_slurm.runtime.steps import stop_all


def run_job(job_dir: str) -> dict[str, Any]:
    """Entry point inside the allocation."""
    path = Path(job_dir)
    early = take_started(path)
    try:
        from inferx_slurm.runtime.driver import Driver

        driver = Driver(path, early=early)
    except BaseException:
        if early is not None:
            stop_all(early.running)
        raise
    return driver.run()
