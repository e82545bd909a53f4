"""The fabric preflight: which node pairs must move a NIXL transfer before any weights load,
where their records go, and what a failed pair means.

Disaggregated engines move KV between every prefill and every decode node over NIXL, with the
transports the workers' environment names (UCX_TLS and friends). A fabric that cannot carry a
transfer shows up only once both engines have loaded their weights, minutes in; a few KB moved
between each pair with the same settings shows it in seconds. Each decode node runs a target,
each prefill node an initiator that writes into every target and reads the bytes back
(runtime/fabric_probe.py). Pure: no I/O.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from inferx_slurm.engines import node_commands
from inferx_slurm.planning.placement import Plan
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.planning.ports import PORTS_DIR
from inferx_slurm.recipe.sections import Backend
from inferx_slurm.recipe.schema import Recipe

PROBE_SCRIPT = JobPaths.script_rel("fabric_probe.py")
# Bytes each initiator writes into each target: enough for a real RDMA/TCP payload, small
# enough to cost nothing.
TRANSFER_BYTES = 64 * 1024
# The probes' own bound (connect, metadata, transfer); the driver allows start-up on top.
PROBE_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = PROBE_TIMEOUT_S + 90.0


class Side(str, Enum):
    """target: listens on a decode node; initiator: a prefill node, writes into every target."""

    target = "target"
    initiator = "initiator"

    @property
    def role(self) -> str:
        return "decode" if self is Side.target else "prefill"


class Stage(str, Enum):
    """How far a pair got: the first stage that failed names what is broken."""

    agent = "agent"  # creating the NIXL agent with the UCX backend (the transports)
    rendezvous = "rendezvous"  # reaching the target's listener (address, port, target alive)
    metadata = "metadata"  # loading the peer's NIXL metadata (connection wire-up)
    transfer = "transfer"  # the WRITE or the READ back
    verify = "verify"  # the bytes that arrived
    done = "done"


class PairRecord(BaseModel):
    """One initiator -> target transfer, as the initiator saw it."""

    model_config = ConfigDict(frozen=True)

    prefill_node: int
    decode_node: int
    prefill_host: str = ""
    decode_addr: str = ""
    transport: str = Field(description="the UCX_TLS value the pair ran with, '(unset)' when the environment has none")
    ok: bool
    stage: Stage
    seconds: float = Field(description="connect to verified bytes (or to the failure)")
    bytes: int = 0
    error: str = ""


class SideRecord(BaseModel):
    """What one probe process wrote: its own outcome and, for an initiator, one record per pair."""

    side: Side
    node: int
    host: str = ""
    transport: str = "(unset)"
    ok: bool
    stage: Stage
    error: str = ""
    agent_seconds: Optional[float] = None
    seconds: float = 0.0
    pairs: list[PairRecord] = Field(default_factory=list)
    seen: list[int] = Field(default_factory=list, description="target: the prefill nodes whose bytes arrived intact")


def record_file(job_dir: str, side: Side, node: int | str) -> str:
    return f"{JobPaths(job_dir).fabric}/{side.value}.node{node}.json"


def target_ports_file(job_dir: str, node: str | int) -> str:
    """Where a target records the port it listens on (runtime/ports.py's format)."""
    return f"{job_dir}/{PORTS_DIR}/fabric-target.node{node}.env"


def step_name(side: Side, node: int) -> str:
    return f"fabric-{side.value}.node{node}"


def _is_nixl(backend: Backend, args: dict) -> bool:
    if backend is Backend.vllm:
        cfg = args.get("kv-transfer-config")
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except ValueError:
                return "Nixl" in cfg
        # NixlConnector, alone or inside a MultiConnector's list.
        return isinstance(cfg, dict) and "NixlConnector" in json.dumps(cfg)
    if backend is Backend.sglang:
        return str(args.get("disaggregation-transfer-backend", "")).lower() == "nixl"
    return False


def uses_nixl(recipe: Recipe, plan: Plan) -> bool:
    """Disaggregated, and every prefill and decode engine is started with a NIXL connector."""
    workers = [w for w in plan.workers if w.role in ("prefill", "decode")]
    if recipe.topology.aggregated or not workers or recipe.frontend.server == "engine":
        return False
    for w in workers:
        args = {a.flag: a.value for a in node_commands(recipe, plan, w)[0].args}
        if not _is_nixl(recipe.engine.backend, args):
            return False
    return True


def enabled(recipe: Recipe, plan: Plan) -> bool:
    return recipe.engine.fabric_preflight and uses_nixl(recipe, plan)


class FabricPlan(BaseModel):
    """The nodes that run each side: every prefill node initiates to every decode node."""

    model_config = ConfigDict(frozen=True)

    initiators: list[int]
    targets: list[int]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(p, d) for p in self.initiators for d in self.targets]

    def nodes(self, side: Side) -> list[int]:
        return self.targets if side is Side.target else self.initiators


def plan_pairs(plan: Plan) -> FabricPlan:
    def nodes(role: str) -> list[int]:
        return sorted({n for w in plan.role_workers(role) for n in w.nodes})

    return FabricPlan(initiators=nodes("prefill"), targets=nodes("decode"))


STAGE_WORDS = {
    Stage.agent: "creating the NIXL agent with the UCX backend failed (no usable transport for these settings)",
    Stage.rendezvous: "the initiator could not reach the target's listener",
    Stage.metadata: "loading the peer's NIXL metadata failed",
    Stage.transfer: "the NIXL transfer did not complete",
    Stage.verify: "the bytes that arrived differ from those sent",
}
FIX = ("check the workers' UCX settings (engine.env / engine.prefill.env / engine.decode.env: UCX_TLS names transports "
       "this fabric has; `ucx_info -d` on a node lists them) and that the nodes reach each other, or set "
       "engine.fabric_preflight: false to skip this check")


def diagnose(fp: FabricPlan, records: dict[tuple[Side, int], SideRecord], hosts: list[str]) -> Optional[str]:
    """None when every pair moved its bytes and every target saw them; otherwise one line per
    broken pair (or side), naming the pair, its transport and the error."""
    lines: list[str] = []

    def host(n: int) -> str:
        return hosts[n] if n < len(hosts) else "?"

    for side in (Side.initiator, Side.target):
        for n in fp.nodes(side):
            rec = records.get((side, n))
            if rec is None:
                lines.append(f"the {side.value} on plan node {n} ({host(n)}, a {side.role} node) wrote no record: "
                             "it did not start or died; see its log")
            elif not rec.ok and rec.stage is Stage.agent:
                lines.append(f"{side.role} node {n} ({host(n)}) with UCX_TLS={rec.transport}: {STAGE_WORDS[Stage.agent]}: "
                             f"{rec.error}")
    failed_agents = {(s.role, n) for (s, n), r in records.items() if not r.ok and r.stage is Stage.agent}
    for p, d in fp.pairs:
        if ("prefill", p) in failed_agents or ("decode", d) in failed_agents:
            continue  # said above, once per node
        rec = records.get((Side.initiator, p))
        pair = next((r for r in rec.pairs if r.decode_node == d), None) if rec else None
        if rec is not None and pair is None:
            lines.append(f"prefill node {p} ({host(p)}) -> decode node {d} ({host(d)}): not attempted ({rec.error or 'no record'})")
        elif pair is not None and not pair.ok:
            lines.append(f"prefill node {p} ({host(p)}) -> decode node {d} ({host(d)}) with UCX_TLS={pair.transport}: "
                         f"{STAGE_WORDS.get(pair.stage, pair.stage.value)} after {pair.seconds:.2f} s: {pair.error}")
    for d in fp.targets:
        rec = records.get((Side.target, d))
        if rec is not None and rec.stage is not Stage.agent:
            missing = sorted(set(fp.initiators) - set(rec.seen))
            if missing and not lines:
                lines.append(f"decode node {d} ({host(d)}) with UCX_TLS={rec.transport} did not receive intact bytes from "
                             f"prefill node(s) {', '.join(map(str, missing))}: {rec.error or 'no notification'}")
    if not lines:
        return None
    return ("NIXL fabric preflight failed before any weights loaded:\n  " + "\n  ".join(lines) + "\nWhat to do: " + FIX + ".")
