"""Engine command lines derived from the plan.

For every node of every worker this builds the exact argv of the engine process and records
where each flag came from, so a dry run can show why a flag has its value. Per-role user args
win over common user args, which win over derived ones.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.planning.ports import PortVar, port_or_ref
from inferx_slurm.recipe.sections import ArgValue, Backend
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import ParallelKind, Parallelism

KV_BLOCK_DEFAULT = 128
# Headroom over ISL+OSL for chat-template and special tokens the client adds around a prompt.
MAX_MODEL_LEN_HEADROOM = 256

# How long a role may take to register before the run is declared hung. Real engines load
# hundreds of GB and capture CUDA graphs; the mocker is up in seconds.
DEFAULT_STARTUP_TIMEOUT_S = {
    Backend.vllm: 1800.0,
    Backend.sglang: 1800.0,
    Backend.trtllm: 2400.0,
    Backend.mocker: 120.0,
}


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


def startup_timeout(recipe: Recipe, role: str) -> float:
    e = recipe.engine
    return e.role(role).startup_timeout_s or e.startup_timeout_s or DEFAULT_STARTUP_TIMEOUT_S[e.backend]


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


# Addresses are resolved inside the job: the worker script defines these before the engine runs.
LEADER_ADDR = "${LEADER_ADDR}"
INFRA_ADDR = "${INFRA_ADDR}"


def worker_port(w: WorkerPlacement, var: PortVar) -> int | str:
    """A port of the worker's block: the plan's (placement.port_base), or the variable its
    node's port line sets at start (auto)."""
    return port_or_ref(getattr(w.ports, var.name) if w.ports is not None else None, var)


def http_port(recipe: Recipe) -> int | str:
    """frontend.http_port, or the variable holding the one chosen at start."""
    return port_or_ref(recipe.frontend.http_port, PortVar.http)


def _vllm(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    scen_len = max(max_model_len(s.isl, s.osl, block_size(recipe)) for s in recipe.benchmark.scenarios)
    # `vllm serve` takes the model as its positional argument (entry_point()).
    d: dict[str, ArgValue] = {} if own_server(recipe) else {"model": recipe.model.path}
    d["served-model-name"] = recipe.model.name
    if own_server(recipe):
        d.update({"host": "0.0.0.0", "port": http_port(recipe)})
    elif w.role != "agg":
        d["disaggregation-mode"] = w.role
    d["tensor-parallel-size"] = par.tp
    if par.kind is ParallelKind.DEP:
        local = len(w.slices[rank].gpus)
        d.update(
            {
                "data-parallel-size": par.dp,
                "data-parallel-size-local": local,
                "enable-expert-parallel": True,
            }
        )
        if w.multi_node:
            d.update(
                {
                    "data-parallel-address": LEADER_ADDR,
                    "data-parallel-rpc-port": worker_port(w, PortVar.rendezvous),
                    "data-parallel-start-rank": w.slices[rank].dp_ranks[0],
                }
            )
    else:
        if par.ep:
            d["enable-expert-parallel"] = True
        if w.multi_node:
            # TP wider than a node: vLLM's multiprocessing backend rendezvous over torch.distributed.
            d.update(
                {
                    "nnodes": len(w.nodes),
                    "node-rank": rank,
                    "master-addr": LEADER_ADDR,
                    "master-port": worker_port(w, PortVar.rendezvous),
                }
            )
    if rank > 0:
        d["headless"] = True
    d.update({"block-size": block_size(recipe), "max-model-len": scen_len})
    if w.role != "agg":
        d["kv-transfer-config"] = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    if w.role != "prefill":
        # Decode batches are sequences, so graphs keyed by concurrency cover every step;
        # prefill batches are token chunks and gain nothing from these sizes. A speculative
        # step verifies 1 + k tokens per sequence, so its batches are that much larger.
        per_seq = 1 + (recipe.speculative.num_speculative_tokens if recipe.speculative else 0)
        d["compilation-config"] = {"cudagraph_capture_sizes": cuda_graph_sizes(max(recipe.benchmark.concurrency) * per_seq)}
    if recipe.speculative:
        d["speculative-config"] = vllm_speculative_config(recipe)
    return d


def own_server(recipe: Recipe) -> bool:
    """The engine's own OpenAI server, not the Dynamo frontend, answers the clients."""
    return recipe.frontend.server == "engine"


def draft_path(recipe: Recipe) -> Optional[str]:
    spec = recipe.speculative
    return spec.draft_model if spec else None


def vllm_speculative_config(recipe: Recipe) -> dict[str, Any]:
    spec = recipe.speculative
    assert spec is not None
    # vLLM names the MTP method after the model family's head ("deepseek_mtp", "qwen3_next_mtp",
    # ...) and also accepts plain "mtp", which picks the head from the model's config.
    conf: dict[str, Any] = {"method": spec.method.value, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.draft_model:
        conf["model"] = spec.draft_model
    return {**conf, **spec.config}


def _sglang(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    scen_len = max(max_model_len(s.isl, s.osl, block_size(recipe)) for s in recipe.benchmark.scenarios)
    # SGLang shards attention DP inside one TP group: DEPn = tp n, dp n, dp-attention.
    d: dict[str, ArgValue] = {"model-path": recipe.model.path, "served-model-name": recipe.model.name}
    if own_server(recipe):
        d.update({"host": "0.0.0.0", "port": http_port(recipe)})
    if w.role != "agg":
        d.update({"disaggregation-mode": w.role, "disaggregation-transfer-backend": "nixl"})
    d["tp-size"] = par.size
    if par.ep:
        d["ep-size"] = par.size
    if par.kind is ParallelKind.DEP:
        d.update({"dp-size": par.dp, "enable-dp-attention": True})
    if w.multi_node:
        d.update({"nnodes": len(w.nodes), "node-rank": rank, "dist-init-addr": f"{LEADER_ADDR}:{worker_port(w, PortVar.rendezvous)}"})
    d.update({"page-size": block_size(recipe), "context-length": scen_len})
    spec = recipe.speculative
    if spec:
        # SGLang's EAGLE path serves EAGLE, EAGLE3 and a model's own MTP head (no draft path then).
        d.update({"speculative-algorithm": "EAGLE3" if spec.method.value == "eagle3" else
                  "NGRAM" if spec.method.value == "ngram" else "EAGLE",
                  "speculative-num-steps": spec.num_speculative_tokens,
                  "speculative-eagle-topk": 1,
                  "speculative-num-draft-tokens": spec.num_speculative_tokens + 1})
        if spec.draft_model:
            d["speculative-draft-model-path"] = spec.draft_model
    return d


def _trtllm(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    if w.multi_node:
        raise RecipeError(
            f"topology.{w.role}",
            w.parallel,
            f"trtllm workers wider than one node ({plan.gpus_per_node} GPUs) need an MPI launch, not supported yet; "
            "use backend vllm or sglang, or a worker that fits one node",
        )
    scen_len = max(max_model_len(s.isl, s.osl, block_size(recipe)) for s in recipe.benchmark.scenarios)
    d: dict[str, ArgValue] = {
        "model-path": recipe.model.path,
        "served-model-name": recipe.model.name,
        "disaggregation-mode": w.role,
        "tensor-parallel-size": par.size,
    }
    if par.ep:
        d["expert-parallel-size"] = par.size
    if par.kind is ParallelKind.DEP:
        d["enable-attention-dp"] = True
    d.update({"kv-block-size": block_size(recipe), "max-seq-len": scen_len})
    return d


def _mocker(recipe: Recipe, plan: Plan, w: WorkerPlacement, rank: int) -> dict[str, ArgValue]:
    par = Parallelism.parse(w.parallel)
    d: dict[str, ArgValue] = {
        "model-path": recipe.model.path,
        "model-name": recipe.model.name,
        "disaggregation-mode": w.role,  # prefill, decode or agg
        "block-size": block_size(recipe),
    }
    if par.dp > 1:
        d["data-parallel-size"] = par.dp
    return d


_DERIVE = {Backend.vllm: _vllm, Backend.sglang: _sglang, Backend.trtllm: _trtllm, Backend.mocker: _mocker}
MODULES = {Backend.vllm: "dynamo.vllm", Backend.sglang: "dynamo.sglang", Backend.trtllm: "dynamo.trtllm", Backend.mocker: "dynamo.mocker"}


def node_commands(recipe: Recipe, plan: Plan, w: WorkerPlacement) -> list[NodeCommand]:
    """One command per node of the worker; the leader (rank 0) is the one that registers."""
    backend = recipe.engine.backend
    cmds = []
    for rank, node in enumerate(w.nodes):
        if backend is Backend.mocker and rank > 0:
            # The mock engine simulates the whole worker in one process; the other nodes only
            # hold their GPUs for the worker's lifetime, like vLLM's headless ranks do.
            argv = ["sleep", "infinity"]
            args: list[EngineArg] = []
        else:
            args = merge_args(_DERIVE[backend](recipe, plan, w, rank), recipe, w.role)
            argv = [recipe.engine.python, *entry_point(recipe), *flag_argv(args)]
        env = {
            **gpu_pinning(recipe, w.slices[rank].gpus),
            "DYN_SYSTEM_PORT": str(worker_port(w, PortVar.system)),
            "VLLM_NIXL_SIDE_CHANNEL_PORT": str(worker_port(w, PortVar.kv_side_channel)),
        }
        cmds.append(NodeCommand(worker=w.name, node=node, node_rank=rank, leader=rank == 0, argv=argv, args=args, env=env))
    return cmds


def entry_point(recipe: Recipe) -> list[str]:
    """What follows the interpreter: a Dynamo worker module, or the engine's own server."""
    backend = recipe.engine.backend
    if own_server(recipe):
        if backend is Backend.vllm:
            return ["-m", "vllm.entrypoints.cli.main", "serve", recipe.model.path]
        return ["-m", "sglang.launch_server"]
    return ["-m", MODULES[backend]]


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


def describe_args(cmd: NodeCommand) -> list[dict[str, Any]]:
    return [a.model_dump() for a in cmd.args]
