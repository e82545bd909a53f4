"""What `model.node_cache` adds to a job: one copy step per node before the engines start, the
engines reading the path their node's step (and the driver) settled on, and the lines of `plan`
and ``--dry-run`` that say where each node reads its weights and how long the copy should take.

The engines' model path is a variable the worker script sets from a file the driver writes once
every node's copy is done: a node's local copy, or the shared stage where a node could not hold
it. The engines of one role must all name one path (Dynamo rejects workers whose model cards
differ), so a role reads local copies only when every node it runs on has one at one path.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from inferx_slurm.job.interpreter import node_python
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.planning.placement import Plan
from inferx_slurm.recipe.node_cache import NODE_PLACEHOLDER, NodeCacheMode, NodeCacheSpec, expand_dir, format_bytes, mount_root
from inferx_slurm.recipe.schema import Recipe

# Set by the worker script before the engine starts (see serve_lines).
NODE_MODEL = "${INFERX_NODE_MODEL}"
SCRIPT = JobPaths.script_rel("node-cache.sh")
RESULTS_DIR = JobPaths.NODE_CACHE
STEP_MODULE = "inferx_slurm.runtime.node_cache_step"
# A copy step that runs this long has hung: the longest loads reported are one to two hours.
STEP_TIMEOUT_S = 6 * 3600.0


def spec(recipe: Recipe) -> Optional[NodeCacheSpec]:
    """The recipe's node cache when it is on."""
    nc = recipe.model.node_cache
    return nc if nc is not None and nc.on else None


def engine_recipe(recipe: Recipe) -> Recipe:
    """The recipe the engines are rendered from: with the node cache on, the model path is the
    variable the worker script sets, and the served name stays what clients ask for."""
    if spec(recipe) is None:
        return recipe
    model = recipe.model.model_copy(update={"path": NODE_MODEL, "served_name": recipe.model.name})
    return recipe.model_copy(update={"model": model})


def cache_nodes(plan: Plan) -> list[int]:
    """The plan nodes that run engines, each of which needs the weights."""
    return sorted({n for w in plan.workers for n in w.nodes})


def step_argv(recipe: Recipe, job_dir: str) -> list[str]:
    nc = spec(recipe)
    assert nc is not None
    return [node_python(recipe), "-m", STEP_MODULE, "--staged", recipe.model.path, "--dir", nc.dir, "--cap", str(nc.cap),
            "--mode", nc.mode.value, "--workers", str(nc.workers), "--out", f"{job_dir}/{RESULTS_DIR}"]


def env_file(worker: str, node_rank: int) -> str:
    """Where the driver writes the model path of one node of a worker (relative to the job dir)."""
    return f"{RESULTS_DIR}/{worker}.n{node_rank}.env"


def result_file(node: int) -> str:
    """Where a plan node's copy step leaves its outcome (relative to the job dir)."""
    return f"{RESULTS_DIR}/node{node}.json"


def serve_lines(recipe: Recipe, job_dir: str, worker: str) -> list[str]:
    """The worker script's lines that set the engine's model path; none without a node cache."""
    if spec(recipe) is None:
        return []
    where = shlex.quote(f"{job_dir}/{RESULTS_DIR}/{worker}.n") + '"$node_rank".env'
    return ["# The weights: this node's local copy, or the shared stage (decided once every node's copy is done).",
            f"source {where}"]


def mounts(recipe: Recipe) -> list[str]:
    """What a container needs to see its node's cache at the host's path."""
    nc = spec(recipe)
    return [mount_root(nc.dir)] if nc is not None else []


# -- plan and dry run ----------------------------------------------------------------------


def checkpoint_bytes(recipe: Recipe) -> tuple[Optional[int], str]:
    """The checkpoint's size and where it was read from: the stage's manifest when it is reachable
    from here, else the local checkpoint dir, model.weights_gb or model.memory."""
    from inferx_slurm.planning.feasibility import local_weights_gb
    from inferx_slurm.sharedfs.stage_manifest import is_staged, read_manifest

    path = Path(recipe.model.path)
    try:
        if is_staged(path):
            return int(read_manifest(path)["total_bytes"]), "the stage's manifest"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    local = local_weights_gb(recipe.model.path)
    if local:
        return int(local * 1e9), f"the weight files in {recipe.model.path}"
    if recipe.model.weights_gb:
        return int(recipe.model.weights_gb * 1e9), "model.weights_gb"
    m = recipe.model.memory
    if m is not None:
        return int((m.expert_gb + m.dense_gb + m.embed_gb) * 1e9), "model.memory"
    return None, "unknown: set model.weights_gb"


def where_lines(source: Recipe, served: Recipe, plan: Plan) -> list[str]:
    """:func:`weights_lines` for a recipe as written (``source``) and as served after staging."""
    if spec(served) is None:
        return []
    size = checkpoint_bytes(served)
    if size[0] is None:
        size = checkpoint_bytes(source)
    return weights_lines(served, plan, served.model.path, size)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def weights_lines(recipe: Recipe, plan: Plan, staged_path: str, size: tuple[Optional[int], str]) -> list[str]:
    """Where each node reads its weights and how long its copy should take; empty without a node cache."""
    nc = spec(recipe)
    if nc is None:
        return []
    nbytes, size_from = size
    name = f"{Path(staged_path).name}--<stage id>"
    lines = [f"weights: node cache (model.node_cache: dir {nc.dir}, cap {nc.cap}, mode {nc.mode.value})",
             f"  staged copy {staged_path}: {format_bytes(nbytes) if nbytes else 'size unknown'} (from {size_from})"]
    for node in cache_nodes(plan):
        on = ", ".join(w.name for w in plan.workers if node in w.nodes)
        local = expand_dir(nc.dir, f"<node{node}>").rstrip("/") + f"/{name}"
        lines.append(f"  node {node:<3} {on:<28} reads {local}")
    if nbytes:
        est = nbytes / (nc.copy_gb_per_s * 1e9)
        lines.append(f"  copy at job start: est. {_duration(est)} per node at {nc.copy_gb_per_s:g} GB/s "
                     f"(model.node_cache.copy_gb_per_s), all {len(cache_nodes(plan))} nodes at once, {nc.workers} files "
                     "at a time; none where a node already holds this stage")
    fallback = ("the job fails (mode required)" if nc.mode is NodeCacheMode.required
                else "every role with engines on it reads the staged copy, with a warning in status.json")
    lines.append(f"  a node whose disk cannot hold it: {fallback}")
    if NODE_PLACEHOLDER in nc.dir:
        spread = sorted({w.role for w in plan.workers if len({v.leader for v in plan.role_workers(w.role)}) > 1})
        if spread:
            lines.append(f"  {NODE_PLACEHOLDER} gives each node its own path, and engines of one role must name one: "
                         f"{', '.join(spread)} (leaders on several nodes) will read the staged copy")
    return lines
