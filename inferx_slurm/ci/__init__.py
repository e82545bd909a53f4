"""`inferx-slurm ci`: a CI matrix point from environment to result files, report and exit code."""
