"""What every backend's command line shares: argument provenance, flag rendering, the KV block
and context-length rules, the address placeholders and GPU pinning.

Per-role user args win over common user args, which win over derived ones; every argument
records where it came from, so a dry run can show why a flag has its value.
"""

from __future__ import annotations

import json
import math
from typing import Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.planning.placement import WorkerPlacement
from inferx_slurm.planning.ports import PortVar, port_or_ref
from inferx_slurm.recipe.sections import ArgValue, FrontendServer
from inferx_slurm.recipe.schema import Recipe

KV_BLOCK_DEFAULT = 128
# Headroom over ISL+OSL for chat-template and special tokens the client adds around a prompt.
MAX_MODEL_LEN_HEADROOM = 256

# Addresses are resolved inside the job: the worker script defines these before the engine runs.
LEADER_ADDR = "${LEADER_ADDR}"
INFRA_ADDR = "${INFRA_ADDR}"


class EngineArg(BaseModel):
    model_config = ConfigDict(frozen=True)

    flag: str
    value: ArgValue
    source: str  # "derived", "engine.args" or "engine.<role>.args"


class NodeCommand(BaseModel):
    """What runs on one node of a worker."""

    model_config = ConfigDict(frozen=True)

    worker: str
    node: int
    node_rank: int
    leader: bool
    argv: list[str]
    args: list[EngineArg]
    env: dict[str, str]


def max_model_len(isl: int, osl: int, block: int = KV_BLOCK_DEFAULT) -> int:
    """ISL+OSL plus headroom, rounded up to whole KV blocks (8k1k, block 128 -> 9472)."""
    return math.ceil((isl + osl + MAX_MODEL_LEN_HEADROOM) / block) * block


def scenario_len(recipe: Recipe) -> int:
    """The context length that holds the longest benchmark scenario."""
    return max(max_model_len(s.isl, s.osl, block_size(recipe)) for s in recipe.benchmark.scenarios)


def cuda_graph_sizes(max_concurrency: int) -> list[int]:
    """Powers of two up to the first one >= the highest concurrency."""
    sizes, s = [], 1
    while True:
        sizes.append(s)
        if s >= max_concurrency:
            return sizes
        s *= 2


def block_size(recipe: Recipe) -> int:
    for args in (recipe.engine.decode.args, recipe.engine.prefill.args, recipe.engine.agg.args, recipe.engine.args):
        for key in ("block-size", "page-size", "tokens-per-block"):
            v = args.get(key)
            if v is not None and v is not False:  # the recipe checked it is a whole number >= 1
                return int(v)  # type: ignore[arg-type]
    return KV_BLOCK_DEFAULT


def own_server(recipe: Recipe) -> bool:
    """The engine's own OpenAI server, not the Dynamo frontend, answers the clients."""
    return recipe.frontend.server is FrontendServer.engine


def flags(values: dict[str, ArgValue]) -> list[str]:
    """{flag: value} as argv: True is a bare flag, False/None leave it out, dicts and lists are JSON."""
    out: list[str] = []
    for flag, v in values.items():
        if v is None or v is False:
            continue
        out.append(f"--{flag.lstrip('-')}")
        if v is True:
            continue
        out.append(json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v))
    return out


def flag_argv(args: list[EngineArg]) -> list[str]:
    return flags({a.flag: a.value for a in args})


def merge_args(derived: dict[str, ArgValue], recipe: Recipe, role: str) -> list[EngineArg]:
    merged: dict[str, EngineArg] = {k: EngineArg(flag=k, value=v, source="derived") for k, v in derived.items()}
    for source, extra in (("engine.args", recipe.engine.args), (f"engine.{role}.args", recipe.engine.role(role).args)):
        for k, v in extra.items():
            merged[k] = EngineArg(flag=k, value=v, source=source)
    return list(merged.values())


def arg_number(args: dict[str, ArgValue], key: str, default: float) -> float:
    """A numeric engine flag as its engine reads it; unset (or switched off) is the engine's default."""
    v = args.get(key)
    return default if v is None or v is False else float(v)  # type: ignore[arg-type]


def kv_dtype_bytes(args: dict[str, ArgValue]) -> Optional[int]:
    """Bytes per KV element when --kv-cache-dtype says FP8; None: the model's own dtype."""
    return 1 if str(args.get("kv-cache-dtype") or "auto").lower().startswith("fp8") else None


def gpu_pinning(recipe: Recipe, gpus: list[int]) -> dict[str, str]:
    """The variables that give a worker exactly its GPUs.

    Workers of one node share its GPUs through overlapping steps, each step seeing all of
    them; the plan decides which GPUs each worker gets, so two DEP2 workers never land on
    the same pair. On NVIDIA nodes that is CUDA_VISIBLE_DEVICES. On AMD nodes Slurm (22.05+,
    gres Flags=amd_gpu_env or AutoDetect=rsmi) sets ROCR_VISIBLE_DEVICES to the step's GPUs,
    and the ROCm runtime applies HIP_VISIBLE_DEVICES *within* that set: so the worker keeps
    Slurm's ROCR_VISIBLE_DEVICES and selects its GPUs by position with HIP_VISIBLE_DEVICES.
    Re-pinning ROCR_VISIBLE_DEVICES with absolute indices would fight Slurm's binding (and
    select nothing under a device cgroup that renumbers). CUDA_VISIBLE_DEVICES is set to the
    same list because vLLM's ROCm platform refuses the two when they differ.
    """
    from inferx_slurm.recipe.profiles import PROFILES

    listed = ",".join(str(g) for g in gpus)
    if PROFILES[recipe.profile].gpu_vendor == "amd":
        return {"HIP_VISIBLE_DEVICES": listed, "CUDA_VISIBLE_DEVICES": listed}
    return {"CUDA_VISIBLE_DEVICES": listed}


def worker_port(w: WorkerPlacement, var: PortVar) -> int | str:
    """A port of the worker's block: the plan's (placement.port_base), or the variable its
    node's port line sets at start (auto)."""
    return port_or_ref(getattr(w.ports, var.name) if w.ports is not None else None, var)


def http_port(recipe: Recipe) -> int | str:
    """frontend.http_port, or the variable holding the one chosen at start."""
    return port_or_ref(recipe.frontend.http_port, PortVar.http)
