"""The batch script's first Python: start the deployment's first steps, then hand over to
submitit's job runner in the same process.

The batch script runs `python -u -m inferx_slurm.runtime.boot JOB_DIR -u -m submitit.core._submit
FOLDER`: everything after JOB_DIR is submitit's own runner command. Importing submitit and
unpickling the job take a good part of the start-up; the frontend and engines need neither, so
they start before both, and the driver adopts them (runtime/entry.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from inferx_slurm.runtime import start

RUNNER = ["-u", "-m", "submitit.core._submit"]


def main(argv: list[str]) -> None:
    if len(argv) != 2 + len(RUNNER) or argv[1:-1] != RUNNER:
        sys.exit(f"usage: python -u -m inferx_slurm.runtime.boot JOB_DIR {' '.join(RUNNER)} FOLDER (got {argv})")
    job_dir, folder = Path(argv[0]), argv[-1]
    start.start_early(job_dir)
    from submitit.core.submission import submitit_main

    sys.argv = [RUNNER[-1], folder]
    submitit_main()


if __name__ == "__main__":
    main(sys.argv[1:])
