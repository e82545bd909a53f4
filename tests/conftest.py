"""Shared fixtures: the real local Slurm cluster and the tiny model, started once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCAL_RECIPES = REPO / "recipes" / "disagg" / "local"
# The site file the GB200 recipes are written against (partition, interpreter, image/stage dirs).
GB200_SITE = REPO / "examples" / "sites" / "gb200-lustre.yaml"

# A developer's own ~/.config/inferx-slurm/site.yaml must not change what the tests see; tests
# that exercise site settings name their file.
os.environ.setdefault("INFERX_SITE", "none")


@pytest.fixture(scope="session")
def cluster():
    """A 3-node local cluster with 4 fake GPUs a node; left as found (stopped only if we started it)."""
    from inferx_slurm import localdev as lc
    from inferx_slurm.commands.local_cluster import ensure_tiny_model

    state_dir = Path(os.environ.get("INFERX_LOCAL_CLUSTER_DIR", "/var/tmp/inferx-local-cluster"))
    was_up = lc.status(state_dir).up
    info = lc.up(nodes=3, gpus_per_node=4, state_dir=state_dir)
    ensure_tiny_model(info.state_dir)
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "INFERX_LOCAL_CLUSTER_DIR")}
    os.environ.update(info.env)
    os.environ["INFERX_LOCAL_CLUSTER_DIR"] = str(info.state_dir)
    yield info
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if not was_up:
        lc.down(state_dir)


def local_recipe(name: str, **overrides):
    from inferx_slurm.recipe.schema import Recipe

    r = Recipe.load(LOCAL_RECIPES / name)
    return r.with_overrides(overrides) if overrides else r
