#!/usr/bin/env bash
exec inferx-slurm ci "${CONFIG_FILE:?CONFIG_FILE names the recipe}" ${BASELINE_DIR:+--baseline "$BASELINE_DIR"} "$@"
