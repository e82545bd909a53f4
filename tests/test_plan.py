import json
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import plan_topology
from inferx_slurm.recipe.topology import Topology


def test_2p1d_dep8_dep16_on_gb200():
    plan = plan_topology(Topology.parse("2P1D DEP8->DEP16"), 4)
    assert (plan.total_nodes, plan.total_gpus) == (8, 32)
    p0, p1, d0 = plan.workers
    assert p0.nodes == [0, 1] and p1.nodes == [2, 3] and d0.nodes == [4, 5, 6, 7]
    assert [s.dp_ranks for s in d0.slices] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert d0.leader == 4


def test_small_workers_pack_first_fit():
    plan = plan_topology(Topology.parse("2P1D DEP2->DEP4"), 4)
    p0, p1, d0 = plan.workers
    assert p0.nodes == p1.nodes == [0]
    assert p0.slices[0].gpus == [0, 1] and p1.slices[0].gpus == [2, 3]
    assert d0.nodes == [1]
    assert plan.total_nodes == 2


def test_roles_do_not_share_nodes_unless_opted_in():
    t = Topology.parse("1P1D TP2->TP2")
    assert plan_topology(t, 4).total_nodes == 2
    shared = plan_topology(t, 4, share_nodes=True)
    assert shared.total_nodes == 1
    assert shared.workers[1].slices[0].gpus == [2, 3]


def test_worker_must_tile_whole_nodes():
    with pytest.raises(RecipeError) as e:
        plan_topology(Topology.parse("1P1D DEP6->TP4"), 4)
    assert "topology.prefill" in str(e.value) and "DEP4, DEP8" in str(e.value)


def test_frontend_node_must_exist():
    with pytest.raises(RecipeError, match="placement.frontend_node"):
        plan_topology(Topology.parse("1P1D TP4"), 4, frontend_node=2)


def test_ports_are_unique_per_worker():
    plan = plan_topology(Topology.parse("4P2D DEP2->TP4"), 4, port_base=20000)
    ports = [p for w in plan.workers for p in w.ports.model_dump().values()]
    assert len(ports) == len(set(ports))


def test_auto_ports_are_left_to_the_nodes():
    # placement.port_base auto: what is free is known only on the node, when the worker starts
    plan = plan_topology(Topology.parse("4P2D DEP2->TP4"), 4)
    assert all(w.ports is None for w in plan.workers)


def test_plan_is_deterministic():
    t = Topology.parse("4P1D DEP8->DEP16")
    assert plan_topology(t, 4).model_dump() == plan_topology(t, 4).model_dump()


specs = st.tuples(st.sampled_from(["TP", "TEP", "DEP"]), st.sampled_from([1, 2, 3, 4, 8, 12, 16, 32]))


@settings(max_examples=300, deadline=None)
@given(p=st.integers(1, 6), d=st.integers(1, 6), a=specs, b=specs, gpn=st.sampled_from([2, 4, 8]), share=st.booleans())
def test_planner_invariants(p, d, a, b, gpn, share):
    topo = Topology.parse(f"{p}P{d}D {a[0]}{a[1]}->{b[0]}{b[1]}")
    try:
        plan = plan_topology(topo, gpn, share_nodes=share)
    except RecipeError:
        assert any(size > gpn and size % gpn for size in (a[1], b[1]))
        return
    # every GPU is used at most once, and the sum matches the topology
    used = [(s.node, g) for w in plan.workers for s in w.slices for g in s.gpus]
    assert len(used) == len(set(used))
    assert plan.total_gpus == topo.total_gpus == len(used)
    assert all(0 <= n < plan.total_nodes and 0 <= g < gpn for n, g in used)
    # no empty node: the plan asks for exactly what it uses
    assert {n for n, _ in used} == set(range(plan.total_nodes))
    for w in plan.workers:
        assert sum(len(s.gpus) for s in w.slices) == w.gpus
        if w.gpus > gpn:
            assert len(w.nodes) == w.gpus // gpn and all(len(s.gpus) == gpn for s in w.slices)
        else:
            assert len(w.nodes) == 1
        if w.parallel.startswith("DEP"):
            ranks = [r for s in w.slices for r in s.dp_ranks]
            assert ranks == list(range(w.gpus))
    if not share:
        roles = {}
        for w in plan.workers:
            for n in w.nodes:
                roles.setdefault(n, set()).add(w.role)
        assert all(len(r) == 1 for r in roles.values())
    # node count lower bound: nobody wastes a node
    assert plan.total_nodes >= -(-topo.total_gpus // gpn)


def test_cli_plan_json_contract():
    out = subprocess.run(
        [sys.executable, "-m", "inferx_slurm", "plan", "4P1D DEP8->DEP16", "--gpus-per-node", "4", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["total_nodes"] == 12
    assert doc["total_gpus"] == sum(w["gpus"] for w in doc["workers"]) == 48
    w = doc["workers"][4]
    assert (w["role"], w["index"], w["gpus"], w["nodes"]) == ("decode", 0, 16, [8, 9, 10, 11])
    assert all(isinstance(n, int) for wk in doc["workers"] for n in wk["nodes"])


def test_cli_plan_table_rows_per_node():
    out = subprocess.run(
        [sys.executable, "-m", "inferx_slurm", "plan", "2P1D DEP2->DEP4"], capture_output=True, text=True, check=True
    ).stdout
    assert "prefill-0 [0-1], prefill-1 [2-3]" in out
    assert "decode-0 [0-3]" in out
