"""Will the weights fit? Checked before anything is submitted, so a recipe that cannot load
never burns an allocation.

Weights per GPU = checkpoint size / GPUs of one worker: TP shards every layer, EP shards the
experts, which hold nearly all of an MoE model's bytes. For DEP the attention weights are
replicated on every rank, so the figure is a lower bound there. A worker fits when its share
leaves at least KV_SHARE of the engine's usable memory for KV cache and activations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from .errors import RecipeError
from .plan import Plan
from .profiles import PROFILES
from .recipe import ROLES, Recipe

DEFAULT_MEMORY_UTILIZATION = 0.9
KV_SHARE = 0.1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class RoleFit(BaseModel):
    role: str
    parallel: str
    weights_per_gpu_gb: float
    usable_gb: float
    fits: bool

    def describe(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.role} {self.parallel}: {self.weights_per_gpu_gb:.1f} GB of weights per GPU, "
                f"{self.usable_gb:.1f} GB usable -> {verdict}")


def gpu_memory_gb(recipe: Recipe) -> Optional[float]:
    return recipe.slurm.gpu_memory_gb or PROFILES[recipe.profile].gpu_memory_gb


def _utilization(recipe: Recipe, role: str) -> float:
    for args in (recipe.engine.role(role).args, recipe.engine.args):
        for key in ("gpu-memory-utilization", "mem-fraction-static", "free-gpu-memory-fraction"):
            if args.get(key) is not None:
                return float(args[key])  # type: ignore[arg-type]
    return DEFAULT_MEMORY_UTILIZATION


def check(recipe: Recipe, plan: Plan, weights_gb: float) -> list[RoleFit]:
    mem = gpu_memory_gb(recipe)
    if mem is None:
        return []
    fits = []
    for role in ROLES:
        w = plan.role_workers(role)[0]
        usable = mem * _utilization(recipe, role)
        per_gpu = weights_gb / w.gpus
        fits.append(RoleFit(role=role, parallel=w.parallel, weights_per_gpu_gb=per_gpu, usable_gb=usable,
                            fits=per_gpu <= usable * (1 - KV_SHARE)))
    return fits


def require_fit(recipe: Recipe, plan: Plan, weights_gb: Optional[float]) -> list[RoleFit]:
    if weights_gb is None:
        return []
    fits = check(recipe, plan, weights_gb)
    bad = [f for f in fits if not f.fits]
    if bad:
        mem = gpu_memory_gb(recipe)
        problems = [
            f"topology.{f.role}: {f.parallel} puts {f.weights_per_gpu_gb:.1f} GB of the {weights_gb:.0f} GB checkpoint on each "
            f"{mem:.0f} GB GPU, leaving less than {KV_SHARE:.0%} of the {f.usable_gb:.1f} GB usable for KV cache; "
            f"use at least {_min_gpus(weights_gb, f.usable_gb)} GPUs per {f.role} worker"
            for f in bad
        ]
        if len(problems) == 1:
            role = bad[0].role
            raise RecipeError(f"topology.{role}", bad[0].parallel, problems[0].split(": ", 1)[1])
        raise RecipeError("topology", str(recipe.topology), "", problems=problems)
    return fits


def _min_gpus(weights_gb: float, usable_gb: float) -> int:
    n = 1
    while weights_gb / n > usable_gb * (1 - KV_SHARE):
        n *= 2
    return n


def weights_gb(recipe: Recipe) -> Optional[float]:
    """The checkpoint size: the recipe's figure, else measured from a local checkpoint dir."""
    return recipe.model.weights_gb or local_weights_gb(recipe.model.path)


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
