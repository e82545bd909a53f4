"""Prefill and decode must agree on the KV cache's layout, checked before anything is submitted.

Decode reads the blocks prefill wrote: with another block (page) size, another KV-cache dtype,
another model or another connector setting, the transfer fails on every request or, worse,
decode falls back to recomputing each prompt and the run still reports a number. Each
disagreement is refused here with both values and the fields that set them.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from inferx_slurm.engines import node_commands
from inferx_slurm.engines.common import KV_BLOCK_DEFAULT
from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import Plan
from inferx_slurm.recipe.schema import Recipe

# The flag each backend sizes its KV blocks with.
BLOCK_FLAGS = ("block-size", "page-size", "tokens-per-block")
# What the two sides must hold alike: the flags a role's command line can carry, by what they mean.
AGREE = {
    "KV block size": BLOCK_FLAGS,
    "KV-cache dtype": ("kv-cache-dtype",),
    "model": ("model", "model-path"),
    "model revision": ("revision",),
    "tokenizer": ("tokenizer",),
}
# Keys of vLLM's --kv-transfer-config both sides must share (the roles themselves may differ).
CONNECTOR_KEYS = ("kv_connector", "kv_buffer_device", "kv_connector_extra_config")


def _role_args(recipe: Recipe, plan: Plan, role: str) -> Optional[dict[str, tuple[Any, str]]]:
    """flag -> (value, where it came from) on the role's first worker's leader, as rendered."""
    worker = next((w for w in plan.workers if w.role == role), None)
    if worker is None:
        return None
    cmd = node_commands(recipe, plan, worker)[0]
    return {a.flag: (a.value, a.source) for a in cmd.args}


def _first(args: dict[str, tuple[Any, str]], flags: tuple[str, ...]) -> tuple[Any, str]:
    for flag in flags:
        if flag in args and args[flag][0] not in (None, False):
            return args[flag][0], _where(args[flag][1], flag)
    return None, "default"


def _where(source: str, flag: str) -> str:
    return f"{source}.{flag}" if source != "derived" else f"derived {flag}"


def _connector(args: dict[str, tuple[Any, str]]) -> tuple[dict[str, Any], str]:
    raw, source = args.get("kv-transfer-config", (None, "derived"))
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = {"kv_connector": raw}
    conf = raw if isinstance(raw, dict) else {}
    return {k: conf.get(k) for k in CONNECTOR_KEYS if conf.get(k) is not None}, _where(source, "kv-transfer-config")


def layout_problems(recipe: Recipe, plan: Plan) -> list[RecipeError]:
    """One error per way prefill's and decode's KV caches would not match, each naming the decode
    side's field and value and the prefill side's; [] when they match or when nothing crosses
    from prefill to decode (aggregated workers)."""
    if recipe.topology.aggregated:
        return []
    pre, dec = _role_args(recipe, plan, "prefill"), _role_args(recipe, plan, "decode")
    if pre is None or dec is None:
        return []
    out = []
    for what, flags in AGREE.items():
        (pv, pw), (dv, dw) = _first(pre, flags), _first(dec, flags)
        if what == "KV block size":
            pv, dv = pv or KV_BLOCK_DEFAULT, dv or KV_BLOCK_DEFAULT
        if str(pv) != str(dv):
            field = dw if dw != "default" else pw
            out.append(RecipeError(field, dv, f"prefill has {pv!r} ({pw}) but decode has {dv!r} ({dw}): decode reads the blocks "
                                   f"prefill writes, so both need the same {what}; set it once under engine.args"))
    (pc, pw), (dc, dw) = _connector(pre), _connector(dec)
    for key in sorted(set(pc) | set(dc)):
        if pc.get(key) != dc.get(key):
            out.append(RecipeError(f"{dw}:{key}", dc.get(key), f"prefill has {pc.get(key, '(unset)')!r} ({pw}) but decode has {dc.get(key, '(unset)')!r}: "
                                   "both ends of the transfer need the same connector settings"))
    return out


def layout_error(recipe: Recipe, plan: Plan) -> Optional[RecipeError]:
    """The refusal of a deployment whose prefill and decode KV layouts differ (every mismatch in
    one error), or None when they agree."""
    problems = layout_problems(recipe, plan)
    if len(problems) <= 1:
        return problems[0] if problems else None
    first = problems[0]
    return RecipeError(first.field, first.value, first.valid, problems=[str(e) for e in problems])

