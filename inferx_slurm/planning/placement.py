"""The placement planner: pure and deterministic.

Given a validated recipe it decides how many nodes the job needs and, for every worker, which
nodes and GPUs it runs on, its leader node, its data-parallel ranks per node and its ports.

Rules (why):
- Prefill and decode workers never share a node unless the recipe opts in: a prefill burst on
  a shared node stalls the decode worker's inter-token latency, which is what we measure.
- Workers of one role pack first-fit (two DEP2 prefill workers share one 4-GPU node).
- A worker wider than a node spans whole nodes and must tile them exactly: engines split
  TP/DP ranks evenly per node, so DEP6 on 4-GPU nodes cannot be placed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import ParallelKind, Parallelism, Role, Topology

# One block of ports per worker. Each worker is a separate process group and on a
# single-host test cluster every node shares one network namespace, so ports are unique per
# deployment rather than per node. With placement.port_base auto (the default) the plan holds
# none: each worker takes a free block on each of its nodes when it starts (planning/ports.py).
PORTS_PER_WORKER = 10


class WorkerPorts(BaseModel):
    model_config = ConfigDict(frozen=True)

    system: int = Field(description="engine health/metrics HTTP port (DYN_SYSTEM_PORT)")
    kv_side_channel: int = Field(description="NIXL handshake side channel")
    rendezvous: int = Field(description="multi-node DP RPC or torch distributed master port")
    kv_events: int = Field(description="KV event publisher port")

    @classmethod
    def block(cls, base: int) -> "WorkerPorts":
        return cls(system=base, kv_side_channel=base + 1, rendezvous=base + 2, kv_events=base + 3)


class NodeSlice(BaseModel):
    """The part of one node a worker uses."""

    model_config = ConfigDict(frozen=True)

    node: int
    gpus: list[int] = Field(description="GPU indices on that node")
    dp_ranks: list[int] = Field(default_factory=list, description="global DP ranks hosted on that node (DEP)")


class WorkerPlacement(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    index: int
    parallel: str
    gpus: int
    nodes: list[int]
    slices: list[NodeSlice]
    ports: WorkerPorts | None = Field(None, description="the worker's block from placement.port_base; none: chosen at start")

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def leader(self) -> int:
        return self.nodes[0]

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1


class Plan(BaseModel):
    """Where everything runs. Serializes to the JSON that `inferx-slurm plan --json` prints."""

    model_config = ConfigDict(frozen=True)

    topology: str
    gpus_per_node: int
    total_nodes: int
    total_gpus: int
    prefill_gpus: int
    decode_gpus: int
    agg_gpus: int = Field(0, description="GPUs of aggregated workers (prefill and decode in one engine)")
    frontend_node: int
    share_nodes: bool
    workers: list[WorkerPlacement]

    def role_workers(self, role: str) -> list[WorkerPlacement]:
        return [w for w in self.workers if w.role == role]

    def node_rows(self) -> list[tuple[int, list[tuple[str, list[int]]]]]:
        """Per node: (node index, [(worker name, GPU indices), ...])."""
        rows: dict[int, list[tuple[str, list[int]]]] = {n: [] for n in range(self.total_nodes)}
        for w in self.workers:
            for s in w.slices:
                rows[s.node].append((w.name, s.gpus))
        return sorted(rows.items())


def plan_topology(
    topology: Topology,
    gpus_per_node: int,
    *,
    share_nodes: bool = False,
    frontend_node: int = 0,
    port_base: int | None = None,
) -> Plan:
    if gpus_per_node < 1:
        raise RecipeError("slurm.gpus_per_node", gpus_per_node, "expected a whole number >= 1")
    for role in topology.roles:
        _check_fits(topology.role(role).parallel, gpus_per_node, f"topology.{role}")

    free: list[int] = []  # free GPUs per node, index = node
    owner: list[str | None] = []  # which role first took each node
    workers: list[WorkerPlacement] = []

    def new_nodes(count: int, role: str) -> list[int]:
        start = len(free)
        free.extend([gpus_per_node] * count)
        owner.extend([role] * count)
        return list(range(start, start + count))

    for role in topology.roles:
        rt = topology.role(role)
        size = rt.parallel.size
        for index in range(rt.workers):
            ports = None if port_base is None else WorkerPorts.block(port_base + PORTS_PER_WORKER * len(workers))
            if size > gpus_per_node:
                nodes = new_nodes(size // gpus_per_node, role)
                slices = []
                for k, n in enumerate(nodes):
                    free[n] = 0
                    ranks = list(range(k * gpus_per_node, (k + 1) * gpus_per_node)) if rt.parallel.kind is ParallelKind.DEP else []
                    slices.append(NodeSlice(node=n, gpus=list(range(gpus_per_node)), dp_ranks=ranks))
            else:
                node = next(
                    (n for n in range(len(free)) if free[n] >= size and (share_nodes or owner[n] == role)),
                    None,
                )
                if node is None:
                    node = new_nodes(1, role)[0]
                first = gpus_per_node - free[node]
                free[node] -= size
                ranks = list(range(size)) if rt.parallel.kind is ParallelKind.DEP else []
                nodes = [node]
                slices = [NodeSlice(node=node, gpus=list(range(first, first + size)), dp_ranks=ranks)]
            workers.append(
                WorkerPlacement(
                    role=role, index=index, parallel=str(rt.parallel), gpus=size, nodes=nodes, slices=slices, ports=ports
                )
            )

    total_nodes = len(free)
    if frontend_node >= total_nodes:
        raise RecipeError(
            "placement.frontend_node", frontend_node, f"this topology uses nodes 0..{total_nodes - 1}; pick one of those"
        )
    return Plan(
        topology=str(topology),
        gpus_per_node=gpus_per_node,
        total_nodes=total_nodes,
        total_gpus=sum(w.gpus for w in workers),
        prefill_gpus=topology.role_gpus("prefill"),
        decode_gpus=topology.role_gpus("decode"),
        agg_gpus=topology.role_gpus("agg"),
        frontend_node=frontend_node,
        share_nodes=share_nodes,
        workers=workers,
    )


def plan_recipe(recipe: Recipe) -> Plan:
    p = recipe.placement
    return plan_topology(
        recipe.topology,
        recipe.gpus_per_node,
        share_nodes=p.share_nodes,
        frontend_node=p.frontend_node,
        port_base=p.port_base,
    )


def _check_fits(par: Parallelism, gpn: int, field: str) -> None:
    if par.size > gpn and par.size % gpn:
        lower = (par.size // gpn) * gpn
        options = ", ".join(f"{par.kind.value}{n}" for n in sorted({lower, lower + gpn} - {0}))
        raise RecipeError(
            field,
            str(par),
            f"a worker wider than a node ({gpn} GPUs) must span whole nodes: use a multiple of {gpn} such as {options}",
        )


def format_plan(plan: Plan, title: str = "") -> str:
    """The human table: one row per node, which workers and GPUs it holds."""
    lines = []
    head = title or plan.topology
    split = f"aggregated {plan.agg_gpus}" if plan.agg_gpus else f"prefill {plan.prefill_gpus}, decode {plan.decode_gpus}"
    lines.append(f"{head}: {plan.total_nodes} nodes x {plan.gpus_per_node} GPUs, {plan.total_gpus} GPUs used ({split})")
    lines.append(f"{'node':>4}  {'workers (GPU indices)':<48} extra")
    for node, items in plan.node_rows():
        cells = ", ".join(f"{name} [{_ranges(g)}]" for name, g in items) or "-"
        extra = "frontend + discovery" if node == plan.frontend_node else ""
        lines.append(f"{node:>4}  {cells:<48} {extra}".rstrip())
    multi = [w for w in plan.workers if w.multi_node]
    for w in multi:
        dp = ""
        if any(s.dp_ranks for s in w.slices):
            dp = "; DP ranks " + ", ".join(f"node {s.node}: {_ranges(s.dp_ranks)}" for s in w.slices)
        lines.append(f"  {w.name} ({w.parallel}) spans nodes {_ranges(w.nodes)}, leader node {w.leader}{dp}")
    return "\n".join(lines)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return ""
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:  # type: ignore[list-item]
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)
