"""The topology grammar: ``xPyD SPEC`` or ``xPyD PREFILL->DECODE``.

SPEC is ``TPn`` (tensor parallel), ``TEPn`` (TP n + expert parallel) or ``DEPn``
(data-parallel attention + expert parallel over n GPUs). ``1P1D TP4->TEP8`` is one prefill
worker on 4 GPUs and one decode worker on 8; ``2P2D TEP4`` applies TEP4 to both roles.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import RecipeError

KINDS_HELP = "TPn (tensor parallel), TEPn (TP + expert parallel) or DEPn (DP attention + expert parallel), n >= 1"
TOPOLOGY_HELP = "expected 'xPyD SPEC' or 'xPyD PREFILL->DECODE', e.g. '1P1D TP4->TEP8' or '2P1D DEP8->DEP16'; SPEC is " + KINDS_HELP


class ParallelKind(str, Enum):
    TP = "TP"
    TEP = "TEP"
    DEP = "DEP"


class Parallelism(BaseModel):
    """How one worker spreads over its GPUs."""

    model_config = ConfigDict(frozen=True)

    kind: ParallelKind
    size: int = Field(ge=1, description="GPUs per worker")

    @property
    def tp(self) -> int:
        return 1 if self.kind is ParallelKind.DEP else self.size

    @property
    def dp(self) -> int:
        return self.size if self.kind is ParallelKind.DEP else 1

    @property
    def ep(self) -> bool:
        return self.kind is not ParallelKind.TP

    def __str__(self) -> str:
        return f"{self.kind.value}{self.size}"

    @classmethod
    def parse(cls, text: str, field: str = "topology") -> "Parallelism":
        m = re.fullmatch(r"\s*(TEP|DEP|TP)(\d+)\s*", text, flags=re.IGNORECASE)
        if not m or int(m.group(2)) < 1:
            raise RecipeError(field, text, f"expected {KINDS_HELP}")
        return cls(kind=ParallelKind(m.group(1).upper()), size=int(m.group(2)))


class RoleTopology(BaseModel):
    """Workers of one role: how many, and each one's parallelism."""

    model_config = ConfigDict(frozen=True)

    workers: int = Field(ge=1, description="number of workers of this role")
    parallel: Parallelism

    @model_validator(mode="before")
    @classmethod
    def _parse_parallel(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("parallel"), str):
            data = {**data, "parallel": Parallelism.parse(data["parallel"], "parallel")}
        return data

    @property
    def gpus(self) -> int:
        return self.workers * self.parallel.size


_TOPO_RE = re.compile(
    r"\s*(?P<p>\d+)\s*P\s*(?P<d>\d+)\s*D\s+(?P<a>[A-Za-z]+\d+)\s*(?:(?:->|→)\s*(?P<b>[A-Za-z]+\d+))?\s*",
    flags=re.IGNORECASE,
)


class Topology(BaseModel):
    """Prefill and decode workers of a disaggregated deployment.

    Accepts the string form (``"1P1D TP4->TEP8"``) anywhere a Topology is expected and
    serializes back to it, so recipes stay readable and round-trip.
    """

    model_config = ConfigDict(frozen=True)

    prefill: RoleTopology
    decode: RoleTopology

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            try:
                t = cls.parse(data)
            except RecipeError as e:
                # Inside a recipe pydantic adds the field path; keep only the bad part and the fix.
                raise ValueError(e.valid if e.value == data else f"{e.value!r} is not valid; {e.valid}") from None
            return {"prefill": t.prefill, "decode": t.decode}
        return data

    @classmethod
    def parse(cls, text: str, field: str = "topology") -> "Topology":
        if not isinstance(text, str):
            raise RecipeError(field, text, TOPOLOGY_HELP)
        m = _TOPO_RE.fullmatch(text)
        if not m:
            raise RecipeError(field, text, TOPOLOGY_HELP)
        p, d = int(m.group("p")), int(m.group("d"))
        if p < 1 or d < 1:
            raise RecipeError(field, text, "needs at least one prefill and one decode worker (xPyD with x, y >= 1)")
        a = Parallelism.parse(m.group("a"), field)
        b = Parallelism.parse(m.group("b"), field) if m.group("b") else a
        return cls(prefill=RoleTopology(workers=p, parallel=a), decode=RoleTopology(workers=d, parallel=b))

    def __str__(self) -> str:
        head = f"{self.prefill.workers}P{self.decode.workers}D"
        if self.prefill.parallel == self.decode.parallel:
            return f"{head} {self.prefill.parallel}"
        return f"{head} {self.prefill.parallel}->{self.decode.parallel}"

    @property
    def total_gpus(self) -> int:
        return self.prefill.gpus + self.decode.gpus

    def role(self, name: str) -> RoleTopology:
        return self.prefill if name == "prefill" else self.decode
