#!/usr/bin/env bash
# Drop-in for InferenceX's runners/launch_gb200-nv.sh: its multi-node workflow runs this in the
# workspace root with one matrix point in the environment (RESULT_FILENAME, CONC_LIST, ISL, OSL,
# PREFILL_*/DECODE_*, FRAMEWORK, PRECISION, ...). INFERX_RECIPE names the inferx-slurm recipe
# (put INFERX_RECIPE=... in the matrix entry's prefill-additional-settings); the result files,
# LOGS/ and multinode_server_logs.tar.gz land in $GITHUB_WORKSPACE, named as the later steps read them.
exec inferx-slurm ci "${INFERX_RECIPE:?INFERX_RECIPE names the inferx-slurm recipe of this matrix point}" "$@"
