"""The NIXL fabric preflight: which node pairs it checks, when it runs, what its steps are, how it
judges the records, and the probe itself moving real bytes over NIXL/UCX between two processes."""

from __future__ import annotations

import json
import socket
import os
import subprocess
import time
from pathlib import Path

import pytest

from inferx_slurm.job.render import render
from inferx_slurm.planning import fabric
from inferx_slurm.planning.fabric import FabricPlan, PairRecord, Side, SideRecord, Stage, diagnose, plan_pairs
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe

from conftest import REPO

VLLM_PY = Path(os.environ.get("INFERX_VLLM_PYTHON", "/opt/vllm-venv/bin/python"))
PROBE = REPO / "inferx_slurm" / "runtime" / "fabric_probe.py"
LOCAL_1P1D = REPO / "recipes" / "disagg" / "local" / "vllm-1p1d.yaml"


def recipe(topology: str, backend: str = "vllm", **engine) -> Recipe:
    return Recipe.from_dict({
        "name": "r", "profile": "gb200-nvl72", "model": {"path": "org/M", "served_name": "m"}, "topology": topology,
        "engine": {"backend": backend, **engine}, "benchmark": {"scenarios": ["1k1k"], "concurrency": [1]},
    })


def test_every_prefill_node_pairs_with_every_decode_node():
    r = recipe("2P1D DEP8->DEP16")
    plan = plan_recipe(r)
    fp = plan_pairs(plan)
    prefill = sorted({n for w in plan.role_workers("prefill") for n in w.nodes})
    decode = sorted({n for w in plan.role_workers("decode") for n in w.nodes})
    assert fp.initiators == prefill and fp.targets == decode
    assert len(fp.initiators) == 4 and len(fp.targets) == 4 and not set(prefill) & set(decode)
    assert fp.pairs == [(p, d) for p in prefill for d in decode]
    assert fp.nodes(Side.target) == decode and Side.target.role == "decode" and Side.initiator.role == "prefill"


def test_runs_only_where_engines_move_kv_over_nixl():
    def on(r: Recipe) -> bool:
        return fabric.enabled(r, plan_recipe(r))

    assert on(recipe("1P1D TP4"))  # vLLM derives NixlConnector for prefill and decode
    assert not on(recipe("1P1D TP4", fabric_preflight=False))  # the recipe's switch
    assert not on(recipe("1A TP4"))  # aggregated: no KV moves
    assert not on(recipe("1P1D TP4", backend="mocker"))
    assert not on(recipe("1P1D TP4", backend="trtllm"))
    # Another connector chosen by the recipe: no NIXL, nothing to check.
    assert not on(recipe("1P1D TP4", args={"kv-transfer-config": {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}}))
    assert on(recipe("1P1D TP4", args={"kv-transfer-config": '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}'}))
    # SGLang moves KV over NIXL with that transfer backend (derived), not with another.
    assert on(recipe("1P1D TP4", backend="sglang"))
    assert not on(recipe("1P1D TP4", backend="sglang", args={"disaggregation-transfer-backend": "mooncake"}))


def test_steps_run_the_probe_with_each_roles_ucx_settings(tmp_path):
    r = Recipe.load(LOCAL_1P1D).with_overrides({"engine.decode.env": {"UCX_TLS": "tcp,self"}})
    job = render(r, str(tmp_path))
    fab = [s for s in job.steps if s.kind == "fabric"]
    assert [(s.name, s.role, s.node) for s in fab] == [("fabric-target.node1", "decode", 1), ("fabric-initiator.node0", "prefill", 0)]
    target, init = job.files["scripts/fabric-target.sh"], job.files["scripts/fabric-initiator.sh"]
    assert "export UCX_TLS=tcp,self" in target and "export UCX_TLS=tcp\n" in init
    # The target's port is taken on its node when it starts; the initiator reads where it was recorded.
    assert "fabric.target=auto:INFERX_FABRIC_PORT" in target and '--port "${INFERX_FABRIC_PORT}"' in target
    assert f'--target 1 "${{INFERX_ADDR_1}}" {tmp_path}/ports/fabric-target.node1.env {tmp_path}/fabric/target.node1.json' in init
    assert job.files[fabric.PROBE_SCRIPT] == PROBE.read_text()
    for text in (target, init):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
        assert "ETCD_ENDPOINTS" not in text  # discovery is not theirs to reach
    off = render(r.with_overrides({"engine.fabric_preflight": False}), str(tmp_path))
    assert not [s for s in off.steps if s.kind == "fabric"] and fabric.PROBE_SCRIPT not in off.files


def side(side: Side, node: int, ok: bool = True, stage: Stage = Stage.done, error: str = "", pairs=(), seen=(), tls="tcp"):
    return SideRecord(side=side, node=node, host=f"h{node}", transport=tls, ok=ok, stage=stage, error=error,
                      pairs=list(pairs), seen=list(seen))


def pair(p: int, d: int, ok: bool = True, stage: Stage = Stage.done, error: str = "") -> PairRecord:
    return PairRecord(prefill_node=p, decode_node=d, transport="tcp", ok=ok, stage=stage, seconds=0.05, bytes=131072, error=error)


FP = FabricPlan(initiators=[0, 1], targets=[2])
HOSTS = ["h0", "h1", "h2"]


def test_all_pairs_through_is_no_fault():
    recs = {(Side.initiator, 0): side(Side.initiator, 0, pairs=[pair(0, 2)]),
            (Side.initiator, 1): side(Side.initiator, 1, pairs=[pair(1, 2)]),
            (Side.target, 2): side(Side.target, 2, seen=[0, 1])}
    assert diagnose(FP, recs, HOSTS) is None


def test_a_missing_transport_names_the_node_the_value_and_ucxs_words():
    err = "nixlBackendError: NIXL_ERR_BACKEND (UCX  WARN  transport 'rc_mlx5' is not available, please use one or more of: tcp)"
    recs = {(Side.initiator, n): side(Side.initiator, n, ok=False, stage=Stage.agent, error=err, tls="rc_mlx5") for n in (0, 1)}
    recs[(Side.target, 2)] = side(Side.target, 2, ok=False, stage=Stage.agent, error=err, tls="rc_mlx5")
    text = diagnose(FP, recs, HOSTS)
    assert text is not None and text.startswith("NIXL fabric preflight failed before any weights loaded")
    assert "prefill node 0 (h0) with UCX_TLS=rc_mlx5: creating the NIXL agent" in text
    assert "decode node 2 (h2) with UCX_TLS=rc_mlx5" in text and "transport 'rc_mlx5' is not available" in text
    assert "->" not in text  # one line per node, not one per pair, when the agent itself cannot start
    assert "engine.fabric_preflight: false" in text


def test_one_broken_pair_is_named_with_its_stage():
    recs = {(Side.initiator, 0): side(Side.initiator, 0, pairs=[pair(0, 2)]),
            (Side.initiator, 1): side(Side.initiator, 1, ok=False, stage=Stage.transfer,
                                      pairs=[pair(1, 2, ok=False, stage=Stage.rendezvous, error="nothing accepted a connection on 10.0.0.2:20001")]),
            (Side.target, 2): side(Side.target, 2, ok=False, stage=Stage.transfer, seen=[0])}
    text = diagnose(FP, recs, HOSTS)
    assert text is not None
    assert "prefill node 1 (h1) -> decode node 2 (h2) with UCX_TLS=tcp: the initiator could not reach the target's listener" in text
    assert "10.0.0.2:20001" in text and "prefill node 0 " not in text


def test_a_side_without_a_record_is_a_fault():
    recs = {(Side.initiator, 0): side(Side.initiator, 0, pairs=[pair(0, 2)]), (Side.target, 2): side(Side.target, 2, seen=[0])}
    text = diagnose(FP, recs, HOSTS)
    assert text is not None and "the initiator on plan node 1 (h1, a prefill node) wrote no record" in text


def test_bytes_the_target_never_saw_are_a_fault():
    recs = {(Side.initiator, n): side(Side.initiator, n, pairs=[pair(n, 2)]) for n in (0, 1)}
    recs[(Side.target, 2)] = side(Side.target, 2, ok=False, stage=Stage.transfer, seen=[0], error="1 initiator(s) wrote nothing")
    text = diagnose(FP, recs, HOSTS)
    assert text is not None and "did not receive intact bytes from prefill node(s) 1" in text


# --- the probe itself: two processes, real NIXL over UCX/TCP on this host --------------------

needs_nixl = pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no engine environment with NIXL at {VLLM_PY}")


def probes(tmp_path: Path, tls: str, port: int | None = None, timeout: float = 20, with_target: bool = True):
    env = {**os.environ, "UCX_TLS": tls}
    ports_file, trec, irec = tmp_path / "t.env", tmp_path / "target.json", tmp_path / "initiator.json"
    # Without a target, the port stays bound here but never listens: connections to it are
    # refused, and no other program on the machine can start listening on it meanwhile.
    held = socket.socket()
    if port is None:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
    if with_target:
        held.close()
    ports_file.write_text(f"export INFERX_FABRIC_PORT={port}\n")
    common = ["--size", "4096", "--timeout", str(timeout)]
    t0 = time.time()
    target = subprocess.Popen([str(VLLM_PY), str(PROBE), "target", "--node", "1", "--port", str(port), "--initiators", "1",
                               "--record", str(trec), *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if with_target else None
    init = subprocess.run([str(VLLM_PY), str(PROBE), "initiator", "--node", "0", "--record", str(irec), *common,
                           "--target", "1", "127.0.0.1", str(ports_file), str(trec)], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - t0
    held.close()
    if target:
        target.wait(timeout=60)
    recs = {(Side.initiator, 0): SideRecord.model_validate_json(irec.read_text())}
    if trec.exists():
        recs[(Side.target, 1)] = SideRecord.model_validate_json(trec.read_text())
    return init, target, recs, elapsed


@needs_nixl
def test_probe_moves_and_verifies_bytes_over_nixl(tmp_path):
    init, target, recs, _ = probes(tmp_path, "tcp")
    assert init.returncode == 0 and target.returncode == 0, init.stdout + init.stderr
    (p,) = recs[(Side.initiator, 0)].pairs
    assert p.ok and p.stage is Stage.done and p.bytes == 2 * 4096 and p.transport == "tcp" and p.seconds > 0
    assert recs[(Side.target, 1)].seen == [0] and recs[(Side.target, 1)].ok
    assert diagnose(FabricPlan(initiators=[0], targets=[1]), recs, ["a", "b"]) is None


@needs_nixl
def test_probe_with_an_impossible_transport_fails_at_the_agent_naming_it(tmp_path):
    init, target, recs, _ = probes(tmp_path, "rc_mlx5", timeout=90)
    assert init.returncode == 1 and target.returncode == 1
    for rec in recs.values():
        assert rec.stage is Stage.agent and rec.transport == "rc_mlx5" and "NIXL_ERR_BACKEND" in rec.error
        assert "transport 'rc_mlx5' is not available" in rec.error  # UCX's own words, not just NIXL's code
        assert rec.seconds < 90  # at agent creation, not at the probe's time-out
    text = diagnose(FabricPlan(initiators=[0], targets=[1]), recs, ["a", "b"])
    assert text is not None and "UCX_TLS=rc_mlx5" in text


@needs_nixl
def test_probe_to_a_port_nobody_listens_on_fails_at_the_rendezvous(tmp_path):
    init, _, recs, elapsed = probes(tmp_path, "tcp", timeout=3, with_target=False)
    assert init.returncode == 1
    (p,) = recs[(Side.initiator, 0)].pairs
    assert p.stage is Stage.rendezvous and "nothing accepted a connection on 127.0.0.1:" in p.error
    assert elapsed < 30, elapsed
    assert json.loads((tmp_path / "initiator.json").read_text())["ok"] is False
