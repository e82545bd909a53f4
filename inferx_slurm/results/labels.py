"""The labels a result carries for InferenceX's pipeline, each a string or number and never
null (its compare and collect scripts call `.lower()` / `re.split` on them): hardware,
framework, precision, model prefix, speculative decoding, per-role pipeline and context
parallel sizes, and the recipe fingerprint. What the CI environment gives wins; the rest comes
from the recipe that ran. Pure, except `precision`, which may read a local checkpoint's headers.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional

from inferx_slurm.recipe.profiles import PROFILES
from inferx_slurm.recipe.sections import FrontendServer
from inferx_slurm.recipe.schema import Recipe

# InferenceX's framework names (its configs' `framework:`), by (frontend, backend): Dynamo in
# front of the engine, or the engine's own server. The mock engine is Dynamo's own
# (`dynamo.mocker`) behind the Dynamo frontend, and InferenceX has no name for it:
# `dynamo-mocker` says exactly what served, and no row of it can pass for a real engine's.
_DYNAMO, _OWN = FrontendServer.dynamo, FrontendServer.engine
FRAMEWORKS = {
    (_DYNAMO, "vllm"): "dynamo-vllm", (_DYNAMO, "sglang"): "dynamo-sglang", (_DYNAMO, "trtllm"): "dynamo-trt",
    (_DYNAMO, "mocker"): "dynamo-mocker",
    (_OWN, "vllm"): "vllm", (_OWN, "sglang"): "sglang", (_OWN, "trtllm"): "trt",
}

# Engine flags that set pipeline and context parallelism, per kind; absent means 1. The
# topology grammar has no pipeline or context parallelism of its own.
PARALLEL_FLAGS = {
    "pp": ("pipeline-parallel-size", "pp-size"),
    "dcp": ("decode-context-parallel-size", "dcp-size"),
    "pcp": ("prefill-context-parallel-size", "pcp-size"),
}


def hardware(recipe: Recipe, runner_type: Optional[str]) -> str:
    """RUNNER_TYPE, else the profile's InferenceX hardware key, else the profile's name (no
    InferenceX platform: its app skips such rows, as it should)."""
    return runner_type or PROFILES[recipe.profile].hw or recipe.profile


def framework(recipe: Recipe) -> str:
    return FRAMEWORKS[(recipe.frontend.server, recipe.engine.backend.value)]


def spec_decoding(recipe: Recipe) -> str:
    return recipe.speculative.method.value if recipe.speculative else "none"


def model_prefix(recipe: Recipe, given: Optional[str]) -> str:
    """MODEL_PREFIX, else the served model's name without its organization, as InferenceX spells
    its prefixes: lower case, letters, digits and dots only (MiniMaxAI/MiniMax-M3 -> minimaxm3,
    Kimi-K2.5 -> kimik2.5)."""
    name = recipe.model.name.rstrip("/").split("/")[-1]
    return given or re.sub(r"[^a-z0-9.]", "", name.lower()) or "model"


def precision(recipe: Recipe, given: Optional[str]) -> str:
    """PRECISION, else the stored format of the model's weights (model.memory, or a local
    checkpoint's headers), else "unknown"."""
    if given:
        return given
    if recipe.model.memory is not None:
        return recipe.model.memory.format
    from inferx_slurm.planning.feasibility import footprint

    try:
        fp = footprint(recipe)
    except Exception:  # a label must never fail a finished run
        fp = None
    if fp is not None and fp.split_known:
        formats = fp.formats("expert") or fp.formats("dense")
        if formats:
            return formats[0]
    return "unknown"


def parallel_sizes(recipe: Recipe, role: str) -> dict[str, int]:
    """{"pp", "dcp", "pcp"} of a role's workers from their engine flags; 1 when not used."""
    args = {**recipe.engine.args, **recipe.engine.role(role).args}
    out = {}
    for kind, names in PARALLEL_FLAGS.items():
        v = next((args[n] for n in names if n in args), 1)
        out[kind] = int(v) if isinstance(v, (int, str)) and str(v).isdigit() and int(v) >= 1 else 1
    return out


def fingerprint(recipe: Recipe) -> str:
    """sha256 of what determines the deployment: topology and GPUs a node, model and image,
    engine and frontend settings, speculative decoding, environment. Not the recipe's name, the
    benchmark, Slurm's partition or time, ports, or where files live: two runs with the same
    fingerprint served the same thing, wherever they ran and whatever they measured."""
    d = recipe.to_dict()
    engine = d["engine"]
    spec = d.get("speculative")
    doc: dict[str, Any] = {
        "topology": d["topology"],
        "gpus_per_node": recipe.gpus_per_node,
        "share_nodes": recipe.placement.share_nodes,
        "profile": recipe.profile,
        "model": recipe.model.name,
        "model_revision": recipe.expect.model_revision,
        "image": recipe.container.image,
        "engine": {k: engine.get(k) for k in ("backend", "args", "env", "prefill", "decode", "agg", "dynamo_install")},
        "frontend": {k: d["frontend"].get(k) for k in ("server", "router_mode", "args")},
        "speculative": None if spec is None else {**spec, "draft_model": (spec.get("draft_model") or "").rstrip("/").split("/")[-1]},
        # A value that is a path says where something lives on this cluster, not how it runs.
        "env": {k: v for k, v in recipe.env.items() if not v.startswith("/")},
    }
    for role in ("prefill", "decode", "agg"):
        doc["engine"][role] = {k: (doc["engine"][role] or {}).get(k) for k in ("args", "env")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
