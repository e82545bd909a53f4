"""Will a recipe fit in GPU memory? Answered per role before anything is staged or submitted.

The numbers come from `memory.py`; this module reads them off a recipe: the checkpoint's
footprint (local safetensors headers, else `model.memory`, else `model.weights_gb`), each
role's engine memory settings from the exact arguments its engine gets, and the benchmark
points. Verdicts:
- a role with no KV room is an error naming the role, the numbers and the smallest change
  that fits (TEP instead of DEP, a lower concurrency, more GPUs);
- a point beyond a role's KV capacity is a warning in `plan` and `launch --dry-run`; `launch`
  refuses it unless forced, and a sweep skips it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from inferx_slurm.engines import engine_memory
from inferx_slurm.engines.common import cuda_graph_sizes
from inferx_slurm.errors import FieldProblem, raise_problems
from inferx_slurm.planning.footprint import GB, Footprint, footprint_from_split, footprint_from_tensors, footprint_from_total
from inferx_slurm.planning.memory import KV_SHARE, EngineMemory, Point, RoleMemory, alternatives, describe, plan_role
from inferx_slurm.planning.placement import Plan, plan_recipe
from inferx_slurm.recipe.profiles import PROFILES
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import Parallelism

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class MemoryPlan(BaseModel):
    """Every role's memory and the verdicts; `plan --json` carries it as `memory`."""

    model_config = ConfigDict(frozen=True)

    profile: str
    gpu_gb: float
    source: str = Field(description="where the byte counts come from")
    stored_gb: dict[str, float] = Field(default_factory=dict, description="bytes as stored per kind (expert, dense, embed, ...)")
    formats: dict[str, list[str]] = Field(default_factory=dict, description="storage formats per kind")
    roles: list[RoleMemory]
    errors: list[Annotated[FieldProblem, PlainSerializer(str, return_type=str)]] = Field(
        default_factory=list, description="roles with no KV room and the smallest change that fits")
    warnings: list[str] = Field(default_factory=list, description="points beyond a role's KV capacity")

    def role(self, name: str) -> RoleMemory:
        return next(r for r in self.roles if r.role == name)

    @property
    def over_capacity(self) -> list[tuple[str, int]]:
        """(scenario, concurrency) of every point some role cannot hold."""
        seen: dict[tuple[str, int], None] = {}
        for r in self.roles:
            for p in r.over:
                seen[(p.scenario, p.concurrency)] = None
        return list(seen)


# ---- reading a recipe -----------------------------------------------------------------------


def footprint(recipe: Recipe) -> Optional[Footprint]:
    """The model's footprint: a local checkpoint's headers, else model.memory, else model.weights_gb."""
    from inferx_slurm.planning.checkpoint import read_checkpoint

    ckpt = read_checkpoint(recipe.model.path)
    if ckpt is not None:
        return footprint_from_tensors(ckpt.tensors, ckpt.config, source=f"{ckpt.path} ({ckpt.shards} safetensors shards)")
    m = recipe.model.memory
    if m is not None:
        return footprint_from_split(expert_gb=m.expert_gb, dense_gb=m.dense_gb, embed_gb=m.embed_gb, fmt=m.format,
                                    embed_fmt=m.embed_format, config=m.config, source="model.memory")
    if recipe.model.weights_gb:
        return footprint_from_total(recipe.model.weights_gb, "model.weights_gb")
    local = local_weights_gb(recipe.model.path)
    return footprint_from_total(local, f"size of the weight files in {recipe.model.path}") if local else None


def local_weights_gb(path: str | Path) -> Optional[float]:
    """Size of the weight files under a local checkpoint dir (None when it is no local dir)."""
    root = Path(path)
    try:
        if not root.is_dir():
            return None
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    except OSError:  # a name too long for this filesystem, a file gone mid-walk: nothing local to measure
        return None
    return total / 1e9 if total else None


def gpu_memory_gb(recipe: Recipe) -> Optional[float]:
    return recipe.slurm.gpu_memory_gb or PROFILES[recipe.profile].gpu_memory_gb


def role_points(recipe: Recipe, role: str) -> list[Point]:
    """Benchmark points as a role holds them: prefill keeps the prompt, decode (and agg) prompt + output."""
    out = []
    for s in recipe.benchmark.scenarios:
        tokens = s.isl if role == "prefill" else s.isl + s.osl
        out.extend(Point(scenario=s.name, concurrency=c, tokens=tokens) for c in recipe.benchmark.concurrency)
    return out


# ---- the plan ------------------------------------------------------------------------------


def draft_model_bytes(recipe: Recipe) -> Optional[int]:
    """The speculative draft's weights: measured from a local checkpoint, else the recipe's
    speculative.draft_gb; None when there is a separate draft of unknown size."""
    spec = recipe.speculative
    if spec is None or not spec.draft_model:
        return 0
    gb = local_weights_gb(spec.draft_model)
    if gb is None:
        gb = spec.draft_gb
    return None if gb is None else int(gb * 1e9)


def plan_memory(recipe: Recipe, fp: Optional[Footprint], *, plan: Optional[Plan] = None,
                draft_bytes: Optional[int] = None) -> Optional[MemoryPlan]:
    """Every role's memory for a recipe (placed by `plan`) and footprint; None when GPU memory
    or the model size is unknown."""
    draft_unknown = False
    if draft_bytes is None:
        measured = draft_model_bytes(recipe)
        draft_unknown, draft_bytes = measured is None, measured or 0
    gpu = gpu_memory_gb(recipe)
    if gpu is None or fp is None:
        return None
    plan = plan or plan_recipe(recipe)
    prof = PROFILES[recipe.profile]
    roles, errors, warnings = [], [], []
    if draft_unknown:
        assert recipe.speculative is not None
        warnings.append(f"speculative.draft_model {recipe.speculative.draft_model} is not a local checkpoint: its weights are not "
                        "counted; set speculative.draft_gb (or stage it locally) for a plan that includes them")
    for role in dict.fromkeys(w.role for w in plan.workers):
        eng = engine_memory(recipe, plan, role)
        if eng is None:
            continue
        par = Parallelism.parse(plan.role_workers(role)[0].parallel)
        workers = len(plan.role_workers(role))
        points = role_points(recipe, role)
        kw: dict[str, Any] = dict(native=prof.native_formats, moe_weight_only=prof.moe_weight_only_formats, draft_bytes=draft_bytes)
        rm = plan_role(role, par, workers, fp, eng, gpu, points, **kw)
        roles.append(rm)
        if rm.verdict == "no_kv_room":
            fixes = _fixes(recipe, plan.gpus_per_node, role, par, workers, fp, eng, gpu, points, kw)
            errors.append(FieldProblem(field=f"topology.{role}", value=str(recipe.topology), valid=_no_room_message(rm, fixes)))
        for p in rm.over if rm.verdict != "no_kv_room" else []:
            warnings.append(
                f"{role} {rm.parallel}: {p.scenario} at concurrency {p.concurrency} puts {p.tokens_per_rank} tokens on each of "
                f"its {workers * par.dp} DP rank(s), beyond the {rm.tokens_per_rank} its KV cache holds "
                f"({rm.kv_gb:.1f} GB); largest concurrency that fits: {rm.max_concurrency.get(p.scenario, 0)}"
            )
    stored: dict[str, float] = {}
    for g in fp.groups:
        stored[g.kind] = round(stored.get(g.kind, 0) + g.bytes / GB, 3)
    # Formats that carry the bulk of a kind's bytes (norms and router biases in FP32 are noise).
    formats = {k: [f for f in fp.formats(k) if sum(g.bytes for g in fp.groups if g.kind == k and g.format == f) > 0.02 * v * GB]
               for k, v in stored.items()}
    if not fp.split_known:
        stored, formats = {"total": stored.get("dense", 0)}, {}
    return MemoryPlan(profile=recipe.profile, gpu_gb=gpu, source=fp.source, stored_gb=stored, formats=formats, roles=roles,
                      errors=errors, warnings=warnings)


def _fixes(recipe: Recipe, gpn: int, role: str, par: Parallelism, workers: int, fp: Footprint, eng: EngineMemory, gpu: float,
           points: list[Point], kw: dict[str, Any]) -> list[str]:
    fixes = []
    for alt in alternatives(par):
        if alt.size > gpn and alt.size % gpn:
            continue  # would not tile whole nodes
        rm = plan_role(role, alt, workers, fp, eng, gpu, points, **kw)
        if rm.verdict != "no_kv_room":
            extra = (alt.size - par.size) * workers
            cost = f"same {par.size} GPUs" if extra == 0 else f"{extra} more GPUs"
            fixes.append(f"{alt} instead of {par} ({cost}; {rm.kv_gb:.1f} GB of KV cache a GPU)")
            if extra:
                break  # the smallest wider worker is enough
    if eng.graphs_follow_concurrency:
        top = max(p.concurrency for p in points)
        c = 1 << (top.bit_length() - 1)
        if c == top:
            c //= 2
        while c >= 1:
            lower = eng.model_copy(update={"capture_sizes": cuda_graph_sizes(c)})
            pts = [p.model_copy(update={"concurrency": min(p.concurrency, c)}) for p in points]
            rm = plan_role(role, par, workers, fp, lower, gpu, pts, **kw)
            if rm.verdict != "no_kv_room":
                fixes.insert(1 if fixes and "same" in fixes[0] else 0,
                             f"a top concurrency of {c} instead of {top} (smaller CUDA graphs; {rm.kv_gb:.1f} GB of KV cache a GPU)")
                break
            c //= 2
    return fixes


def _no_room_message(rm: RoleMemory, fixes: list[str]) -> str:
    if not rm.split_known:
        total, n = rm.weights_gb * _size(rm.parallel), 1
        while total / n > rm.budget_gb * (1 - KV_SHARE):
            n *= 2
        return (f"{rm.parallel} puts {rm.weights_gb:.1f} GB of weights on each {rm.gpu_gb:.0f} GB GPU, "
                f"leaving less than 10% of the {rm.budget_gb:.1f} GB budget for KV cache; use at least {n} GPUs per {rm.role} worker")
    fix = "; smallest change that fits: " + ", or ".join(fixes) if fixes else "; no wider worker up to 8x fits: use a GPU with more memory or a smaller checkpoint"
    return f"no room for KV cache: {describe(rm)}{fix}"


def _size(parallel: str) -> int:
    return Parallelism.parse(parallel).size


# ---- entry points for the CLI and the launcher ------------------------------------------------


def memory_plan(recipe: Recipe, *, plan: Optional[Plan] = None, draft_bytes: Optional[int] = None) -> Optional[MemoryPlan]:
    return plan_memory(recipe, footprint(recipe), plan=plan, draft_bytes=draft_bytes)


OVER_CAPACITY_FIX = " (lower the concurrency, or pass --force to run it anyway)"


def require_fit(recipe: Recipe, *, force: bool = False, mp: Optional[MemoryPlan] = None) -> Optional[MemoryPlan]:
    """Raise (exit 2) for a role with no KV room, and, unless forced, for points beyond KV capacity."""
    mp = mp if mp is not None else memory_plan(recipe)
    if mp is None:
        return None
    topology = str(recipe.topology)
    over = [] if force else [FieldProblem(field="benchmark.concurrency", value=topology, valid=w + OVER_CAPACITY_FIX)
                             for w in mp.warnings]
    raise_problems([*mp.errors, *over], field="topology", value=topology)
    return mp


def format_memory(mp: MemoryPlan) -> str:
    """The per-role table `plan` prints."""
    kinds = ", ".join(f"{k} {v:.1f} GB {'/'.join(mp.formats.get(k, []))}".rstrip() for k, v in mp.stored_gb.items())
    lines = [f"memory per GPU ({mp.profile}, {mp.gpu_gb:.0f} GB a GPU; {mp.source}: {kinds})"]
    scen = list(dict.fromkeys(s for r in mp.roles for s in r.max_concurrency))
    head = (f"{'role':<8} {'parallel':<8} {'budget':>7} {'dense':>6} {'experts':>7} {'other':>6} {'graphs':>6} {'act':>5} "
            f"{'KV GB':>6} {'KV tokens/rank':>14}" + "".join(f" {'max conc ' + s:>14}" for s in scen) + "  verdict")
    lines.append(head)
    for r in mp.roles:
        tok = f"{r.tokens_per_rank}" if r.tokens_per_rank is not None else "?"
        row = (f"{r.role:<8} {r.parallel:<8} {r.budget_gb:>7.1f} {r.dense_gb:>6.1f} {r.experts_gb:>7.1f} {r.other_gb:>6.1f} "
               f"{r.graphs_gb:>6.1f} {r.activations_gb:>5.1f} {r.kv_gb:>6.1f} {tok:>14}"
               + "".join(f" {r.max_concurrency.get(s, '-'):>14}" for s in scen))
        verdict = {"fits": "fits", "over_capacity": "over KV capacity", "no_kv_room": "NO KV ROOM"}[r.verdict]
        lines.append(f"{row}  {verdict}")
    for r in mp.roles:
        if r.held_as:
            lines.append(f"  {r.role}: " + ", ".join(f"{k} held as {v}" for k, v in r.held_as.items()) + f" on {mp.profile}")
    if any(not r.split_known for r in mp.roles):
        lines.append("  only the checkpoint size is known: weights spread over each worker's GPUs (a lower bound; "
                     "a local checkpoint or model.memory gives dense/expert/KV numbers)")
    return "\n".join(lines)
