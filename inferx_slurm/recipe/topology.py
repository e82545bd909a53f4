"""The topology grammar: ``xPyD SPEC``, ``xPyD PREFILL->DECODE`` or ``NA SPEC``.

SPEC is ``TPn`` (tensor parallel), ``TEPn`` (TP n + expert parallel) or ``DEPn``
(data-parallel attention + expert parallel over n GPUs). ``1P1D TP4->TEP8`` is one prefill
worker on 4 GPUs and one decode worker on 8; ``2P2D TEP4`` applies TEP4 to both roles.
``1A TP8`` is one aggregated worker (prefill and decode in the same engine) on 8 GPUs.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferx_slurm.errors import RecipeError

KINDS_HELP = "TPn (tensor parallel), TEPn (TP + expert parallel) or DEPn (DP attention + expert parallel), n >= 1"
TOPOLOGY_HELP = ("expected 'xPyD SPEC', 'xPyD PREFILL->DECODE' or 'NA SPEC' (N aggregated workers), e.g. '1P1D TP4->TEP8', "
                 "'2P1D DEP8->DEP16' or '1A TP8'; SPEC is " + KINDS_HELP)
# The one list of roles: every module that names a role takes it from here.
Role = Literal["prefill", "decode", "agg"]
ROLES: tuple[Role, ...] = get_args(Role)
DISAGG_ROLES: tuple[Role, ...] = ("prefill", "decode")
AGG_ROLES: tuple[Role, ...] = ("agg",)


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


_AGG_RE = re.compile(r"\s*(?P<n>\d+)\s*A\s+(?P<a>[A-Za-z]+\d+)\s*", flags=re.IGNORECASE)
_TOPO_RE = re.compile(
    r"\s*(?P<p>\d+)\s*P\s*(?P<d>\d+)\s*D\s+(?P<a>[A-Za-z]+\d+)\s*(?:(?:->|→)\s*(?P<b>[A-Za-z]+\d+))?\s*",
    flags=re.IGNORECASE,
)


class Topology(BaseModel):
    """Prefill and decode workers of a disaggregated deployment, or aggregated workers.

    Accepts the string form (``"1P1D TP4->TEP8"``, ``"2A TEP4"``) anywhere a Topology is
    expected and serializes back to it, so recipes stay readable and round-trip.
    """

    model_config = ConfigDict(frozen=True)

    prefill: Optional[RoleTopology] = None
    decode: Optional[RoleTopology] = None
    agg: Optional[RoleTopology] = Field(None, description="aggregated workers: prefill and decode in one engine")

    @model_validator(mode="after")
    def _one_kind(self) -> "Topology":
        if self.agg is not None and (self.prefill or self.decode):
            raise ValueError("either aggregated workers (NA SPEC) or prefill and decode workers (xPyD), not both")
        if self.agg is None and not (self.prefill and self.decode):
            raise ValueError("needs prefill and decode workers (xPyD), or aggregated ones (NA SPEC)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            try:
                t = cls.parse(data)
            except RecipeError as e:
                # Inside a recipe pydantic adds the field path; keep only the bad part and the fix.
                raise ValueError(e.valid if e.value == data else f"{e.value!r} is not valid; {e.valid}") from None
            return {"prefill": t.prefill, "decode": t.decode, "agg": t.agg}
        return data

    @classmethod
    def parse(cls, text: str, field: str = "topology") -> "Topology":
        if not isinstance(text, str):
            raise RecipeError(field, text, TOPOLOGY_HELP)
        m = _AGG_RE.fullmatch(text)
        if m:
            if int(m.group("n")) < 1:
                raise RecipeError(field, text, "needs at least one aggregated worker (NA with N >= 1)")
            return cls(agg=RoleTopology(workers=int(m.group("n")), parallel=Parallelism.parse(m.group("a"), field)))
        m = _TOPO_RE.fullmatch(text)
        if not m:
            raise RecipeError(field, text, TOPOLOGY_HELP)
        p, d = int(m.group("p")), int(m.group("d"))
        if p < 1 or d < 1:
            raise RecipeError(field, text, "needs at least one prefill and one decode worker (xPyD with x, y >= 1)")
        a = Parallelism.parse(m.group("a"), field)
        b = Parallelism.parse(m.group("b"), field) if m.group("b") else a
        return cls(prefill=RoleTopology(workers=p, parallel=a), decode=RoleTopology(workers=d, parallel=b))

    @property
    def aggregated(self) -> bool:
        return self.agg is not None

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this deployment has workers in, in placement order."""
        return AGG_ROLES if self.agg is not None else DISAGG_ROLES

    def __str__(self) -> str:
        if self.agg is not None:
            return f"{self.agg.workers}A {self.agg.parallel}"
        assert self.prefill is not None and self.decode is not None
        head = f"{self.prefill.workers}P{self.decode.workers}D"
        if self.prefill.parallel == self.decode.parallel:
            return f"{head} {self.prefill.parallel}"
        return f"{head} {self.prefill.parallel}->{self.decode.parallel}"

    @property
    def total_gpus(self) -> int:
        return sum(self.role(r).gpus for r in self.roles)

    def role_gpus(self, name: str) -> int:
        """GPUs of one role; 0 for a role this deployment does not have."""
        rt = getattr(self, name, None)
        return rt.gpus if rt is not None else 0

    def role(self, name: str) -> RoleTopology:
        rt = getattr(self, name, None) if name in ROLES else None
        if rt is None:
            raise KeyError(f"topology {self} has no {name} workers")
        return rt
