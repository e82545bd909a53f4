"""Each worker's KV-cache capacity as its engine reports it, beside the memory planner's
prediction. Pure. A gap beyond `TOLERANCE` is a warning: the planner's concurrency limits (and
its over-capacity refusals) rest on that prediction."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

TOLERANCE = 0.20


class WorkerCapacity(BaseModel):
    """One worker: tokens one of its DP ranks' KV cache holds, measured and planned."""

    model_config = ConfigDict(frozen=True)

    worker: str
    role: str
    engine_tokens: Optional[int] = Field(None, description="as the engine reports it (smallest over its DP ranks)")
    source: Optional[str] = Field(None, description="where the engine's number comes from: its metrics or its log")
    planned_tokens: Optional[int] = Field(None, description="the memory planner's tokens per DP rank")
    difference_pct: Optional[float] = Field(None, description="(engine - planned) / planned, in %")

    @property
    def warning(self) -> Optional[str]:
        if self.difference_pct is None or abs(self.difference_pct) <= TOLERANCE * 100:
            return None
        return (f"{self.worker}: the engine's KV cache holds {self.engine_tokens:,} tokens, the memory plan predicted "
                f"{self.planned_tokens:,} ({self.difference_pct:+.1f}%, beyond {TOLERANCE * 100:.0f}%): the plan's "
                "concurrency limits do not hold for this engine; check its memory fraction and the model's KV layout")


def compare(worker: str, role: str, engine_tokens: Optional[int], source: Optional[str], planned_tokens: Optional[int]) -> WorkerCapacity:
    diff = None
    if engine_tokens is not None and planned_tokens:
        diff = round((engine_tokens - planned_tokens) / planned_tokens * 100, 1)
    return WorkerCapacity(worker=worker, role=role, engine_tokens=engine_tokens, source=source, planned_tokens=planned_tokens,
                          difference_pct=diff)


def warnings(caps: list[dict[str, Any]]) -> list[str]:
    """Warnings of a summary's `kv_capacity` entries."""
    return [w for c in caps if (w := WorkerCapacity.model_validate(c).warning)]


def lines(caps: list[dict[str, Any]]) -> list[str]:
    """One line per worker, for the CLI."""
    out = []
    for c in caps:
        wc = WorkerCapacity.model_validate(c)
        engine = "not reported" if wc.engine_tokens is None else f"{wc.engine_tokens:,} tokens ({wc.source})"
        plan = "not planned" if wc.planned_tokens is None else f"{wc.planned_tokens:,}"
        diff = "" if wc.difference_pct is None else f" ({wc.difference_pct:+.1f}%)"
        out.append(f"KV capacity {wc.worker}: engine {engine}, plan {plan}{diff}")
    return out
