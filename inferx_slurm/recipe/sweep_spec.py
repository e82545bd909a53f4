"""The recipe's `sweep` section: which topologies, scenarios and concurrencies to run beyond the
recipe's own, with per-point overrides, and how the deployments share Slurm allocations."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field, field_serializer, field_validator

from inferx_slurm.recipe.sections import Scenario, Strict
from inferx_slurm.recipe.topology import Topology


class SweepOverride(Strict):
    match: dict[str, Any] = Field(default_factory=dict, description="topology / scenario / concurrency to match")
    set: dict[str, Any] = Field(description="dotted recipe paths and values, e.g. {engine.decode.args.max-num-seqs: 512}")

    @field_validator("match")
    @classmethod
    def _keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = set(v) - {"topology", "scenario", "concurrency"}
        if bad:
            raise ValueError(f"can match only topology, scenario, concurrency; got {sorted(bad)}")
        return v


class SweepEstimate(Strict):
    """What one deployment of a packed sweep costs, for planning the allocation's time limit.

    A packed allocation needs, for each engine start, `load_s`, plus `point_s` for each
    (scenario, concurrency) point it benchmarks, plus `slurm.stop_before_limit_s` once.
    """

    load_s: float = Field(600, ge=0, description="image start, model load and registration of one engine start (s)")
    point_s: float = Field(300, gt=0, description="one benchmark point: client start, warm-up and the measured requests (s)")


class SweepMode(str, Enum):
    array = "array"
    jobs = "jobs"
    packed = "packed"


class SweepSpec(Strict):
    topologies: list[Topology] = Field(default_factory=list, description="defaults to the recipe's topology")
    scenarios: list[Scenario] = Field(default_factory=list, description="defaults to benchmark.scenarios")
    concurrency: list[int] = Field(default_factory=list, description="defaults to benchmark.concurrency")
    overrides: list[SweepOverride] = Field(default_factory=list)
    mode: SweepMode = Field(
        SweepMode.array,
        description="array: one Slurm job array per allocation shape; jobs: one job per deployment; "
        "packed: the deployments run one after another in one allocation sized by the largest",
    )
    stop_on_failure: bool = Field(False, description="packed: a failed deployment ends the allocation instead of letting the next one run")
    share_max_model_len: bool = Field(
        False,
        description="packed: deployments that differ only in scenario share one engine start, served with the largest "
        "scenario's max_model_len; this changes the numbers of the shorter scenarios (KV capacity, graphs), so it is opt-in",
    )
    estimate: SweepEstimate = Field(default_factory=SweepEstimate, description="packed: per-deployment time estimates")

    @field_serializer("topologies")
    def _ser_topos(self, v: list[Topology]) -> list[str]:
        return [str(t) for t in v]


