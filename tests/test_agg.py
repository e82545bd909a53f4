"""Aggregated workers, the engine's own server, speculative decoding and AMD GPU pinning, in the
pure core: topology -> plan -> engine commands -> rendered steps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inferx_slurm.engines import node_commands
from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import plan_recipe, plan_topology
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.job.render import render
from inferx_slurm.runtime.metrics import SPEC_ACCEPTED, SPEC_DRAFTS, counter_total, has_metric
from inferx_slurm.recipe.topology import Topology

from conftest import REPO

SEEDS = REPO / "recipes" / "agg"


def plan_json(spec: str, gpn: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "plan", spec, "--gpus-per-node", str(gpn), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_cli_places_aggregated_workers():
    one = plan_json("1A TEP8", 8)
    assert (one["total_nodes"], one["total_gpus"]) == (1, 8) and [w["role"] for w in one["workers"]] == ["agg"]
    assert one["agg_gpus"] == 8 and one["prefill_gpus"] == one["decode_gpus"] == 0
    two = plan_json("2A TP4", 8)
    assert two["total_nodes"] == 1 and [w["slices"][0]["gpus"] for w in two["workers"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    wide = plan_json("1A DEP16", 8)
    assert wide["total_nodes"] == 2 and wide["workers"][0]["nodes"] == [0, 1]
    assert [s["dp_ranks"] for s in wide["workers"][0]["slices"]] == [list(range(8)), list(range(8, 16))]


@pytest.mark.parametrize("text,why", [("0A TP8", "at least one"), ("1A DEP6", "multiple of 4"), ("1A XP8", "TPn")])
def test_bad_aggregated_topologies_say_what_is_valid(text, why):
    with pytest.raises(RecipeError) as e:
        plan_topology(Topology.parse(text), 4)
    assert why in str(e.value)


def test_topology_round_trips_and_refuses_mixing():
    assert str(Topology.model_validate("8a dep8")) == "8A DEP8"
    with pytest.raises(ValueError):
        Topology(prefill=Topology.parse("1P1D TP1").prefill)
    with pytest.raises(ValueError):
        Topology(agg=Topology.parse("1A TP1").agg, decode=Topology.parse("1P1D TP1").decode)


def seed(name: str, **sets) -> Recipe:
    r = Recipe.load(SEEDS / name)
    return r.with_overrides(sets) if sets else r


def argv_of(r: Recipe) -> list[str]:
    plan = plan_recipe(r)
    return node_commands(r, plan, plan.workers[0])[0].argv


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_own_server_renders_vllm_api_server_and_no_frontend():
    r = seed("h200/minimax-m3-tep8-1k1k.yaml")
    argv = argv_of(r)
    assert argv[1:6] == ["-m", "vllm.entrypoints.openai.api_server", "--model", r.model.path, "--served-model-name"]
    assert flag(argv, "--port") == "8000" and "--enable-expert-parallel" in argv
    assert argv.count("--model") == 1  # the server's own --model, not a derived one besides it
    for absent in ("--disaggregation-mode", "--kv-transfer-config"):
        assert absent not in argv
    job = render(r, "/j")
    assert {s.kind for s in job.steps} == {"worker", "monitor"}
    assert "scripts/frontend.sh" not in job.files and "scripts/infra.sh" not in job.files


def test_dynamo_aggregated_vllm_worker_has_no_disaggregation_flags():
    r = seed("h200/minimax-m3-tep8-1k1k.yaml", **{"frontend.server": "dynamo"})
    argv = argv_of(r)
    assert argv[1:3] == ["-m", "dynamo.vllm"] and "--disaggregation-mode" not in argv and "--kv-transfer-config" not in argv
    assert {s.kind for s in render(r, "/j").steps} >= {"frontend", "infra", "worker"}


@pytest.mark.parametrize("sets,field", [({"topology": "2A TP4"}, "one aggregated worker"),
                                        ({"topology": "1P1D TP4"}, "one aggregated worker"),
                                        ({"engine.backend": "mocker"}, "vllm or sglang")])
def test_own_server_is_only_for_one_aggregated_vllm_or_sglang_worker(sets, field):
    with pytest.raises(RecipeError) as e:
        seed("h200/minimax-m3-tep8-1k1k.yaml", **sets)
    assert "frontend.server" in str(e.value) and field in str(e.value)


def test_speculative_config_for_vllm_and_sglang():
    r = seed("h200/minimax-m3-tp8-eagle3-1k1k.yaml")
    argv = argv_of(r)
    spec = json.loads(flag(argv, "--speculative-config"))
    assert spec == {"method": "eagle3", "num_speculative_tokens": 3, "model": "Inferact/MiniMax-M3-EAGLE3",
                    "attention_backend": "FLASH_ATTN"}
    # a step verifies 1 + 3 tokens per sequence: graphs cover 4 x the highest concurrency (64)
    assert json.loads(flag(argv, "--compilation-config"))["cudagraph_capture_sizes"][-1] == 256
    sg = argv_of(r.with_overrides({"engine.backend": "sglang"}))
    assert sg[1:3] == ["-m", "sglang.launch_server"]
    assert flag(sg, "--speculative-algorithm") == "EAGLE3" and flag(sg, "--speculative-draft-model-path") == "Inferact/MiniMax-M3-EAGLE3"
    assert flag(sg, "--speculative-num-steps") == "3" and flag(sg, "--speculative-num-draft-tokens") == "4"


def test_draft_weights_are_planned_or_the_plan_says_they_are_not(tmp_path):
    from inferx_slurm.planning.feasibility import memory_plan

    hub = seed("h200/minimax-m3-tp8-eagle3-1k1k.yaml", **{"speculative.draft_gb": None})
    stated = seed("h200/minimax-m3-tp8-eagle3-1k1k.yaml", **{"speculative.draft_gb": 8.0})
    unknown, known = memory_plan(hub), memory_plan(stated)
    assert any("draft_gb" in w and "not counted" in w for w in unknown.warnings)
    assert not any("draft" in w for w in known.warnings)
    # sharded over TP8 like the embeddings: 1 GB more a GPU, 1 GB less KV cache
    assert known.roles[0].other_gb - unknown.roles[0].other_gb == pytest.approx(1.0, abs=0.01)
    assert unknown.roles[0].kv_gb - known.roles[0].kv_gb == pytest.approx(1.0, abs=0.01)
    # a local draft checkpoint is measured, whatever draft_gb says
    local = tmp_path / "eagle3"
    local.mkdir()
    with open(local / "model.safetensors", "wb") as f:
        f.truncate(16 * 10**9)  # sparse: 16 GB described, nothing written
    measured = memory_plan(seed("h200/minimax-m3-tp8-eagle3-1k1k.yaml", **{"speculative.draft_model": str(local), "speculative.draft_gb": 1.0}))
    assert measured.roles[0].other_gb - unknown.roles[0].other_gb == pytest.approx(2.0, abs=0.01)


def test_eagle_needs_a_draft_model():
    with pytest.raises(RecipeError) as e:
        seed("h200/minimax-m3-tp8-eagle3-1k1k.yaml", **{"speculative.draft_model": None})
    assert "speculative" in str(e.value) and "draft_model" in str(e.value)


def test_amd_workers_pin_within_slurms_rocr_set():
    r = seed("mi300x/minimax-m3-tp8-ep1-1k1k.yaml", topology="2A TP4", **{"frontend.server": "dynamo"})
    plan = plan_recipe(r)
    envs = [node_commands(r, plan, w)[0].env for w in plan.workers]
    assert [e["HIP_VISIBLE_DEVICES"] for e in envs] == ["0,1,2,3", "4,5,6,7"]
    assert all(e["CUDA_VISIBLE_DEVICES"] == e["HIP_VISIBLE_DEVICES"] and "ROCR_VISIBLE_DEVICES" not in e for e in envs)
    nv = seed("h200/minimax-m3-tp8-1k1k.yaml", topology="2A TP4", **{"frontend.server": "dynamo"})
    plan = plan_recipe(nv)
    assert [node_commands(nv, plan, w)[0].env.get("HIP_VISIBLE_DEVICES") for w in plan.workers] == [None, None]


def test_acceptance_length_counters():
    text = ("# HELP x\nvllm:spec_decode_num_drafts_total{engine=\"0\"} 100.0\n"
            "vllm:spec_decode_num_accepted_tokens_total{engine=\"0\"} 250.0\n")
    assert has_metric(text, SPEC_DRAFTS) and not has_metric("dynamo_frontend_requests_total 3\n", SPEC_DRAFTS)
    assert 1 + counter_total(text, SPEC_ACCEPTED) / counter_total(text, SPEC_DRAFTS) == 3.5


def test_every_seed_system_has_a_recipe():
    """One recipe per seed system and variant (the InferenceX threads behind the project)."""
    want = {
        "h100/minimax-m3-tp8-1k1k.yaml": ("h100", "1A TP8", None),
        "h200/minimax-m3-tp8-1k1k.yaml": ("h200", "1A TP8", None),
        "h200/minimax-m3-tep8-1k1k.yaml": ("h200", "1A TEP8", None),
        "h200/minimax-m3-dep8-1k1k.yaml": ("h200", "1A DEP8", None),
        "h200/minimax-m3-tp8-eagle3-1k1k.yaml": ("h200", "1A TP8", "eagle3"),
        "mi300x/minimax-m3-tp8-ep1-1k1k.yaml": ("mi300x", "1A TP8", None),
        "mi300x/minimax-m3-tep8-8k1k.yaml": ("mi300x", "1A TEP8", None),
        "mi355x/minimax-m3-fp4-tep4-eagle3-1k1k.yaml": ("mi355x", "1A TEP4", "eagle3"),
    }
    for name, (profile, topo, spec) in want.items():
        r = seed(name)
        assert (r.profile, str(r.topology), r.speculative.method.value if r.speculative else None) == (profile, topo, spec), name
        assert (SEEDS / name).read_text().startswith("# "), f"{name}: a comment naming the platform and what it measures"
    mi300 = argv_of(seed("mi300x/minimax-m3-tp8-ep1-1k1k.yaml"))
    assert "--async-scheduling" in mi300 and flag(mi300, "--max-num-batched-tokens") == "16384"
    assert flag(mi300, "--attention-backend") == "TRITON_ATTN" and flag(mi300, "--block-size") == "128"
    assert "--enable-expert-parallel" not in mi300
    mi355 = seed("mi355x/minimax-m3-fp4-tep4-eagle3-1k1k.yaml")
    assert flag(argv_of(mi355), "--moe-backend") == "aiter" and mi355.engine.env["VLLM_ROCM_USE_AITER_MOE"] == "1"


def test_logs_selects_aggregated_workers(tmp_path, capsys):
    """`logs --role` takes every role of the one role list: aggregated workers' logs included."""
    from inferx_slurm.cli import main
    from inferx_slurm.recipe.topology import ROLES

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"job_id": "41"}))
    for name in ("agg-0.n0", "agg-1.n0", "agg-1.n1", "frontend", "infra", "gpumon.node0"):
        (run / "logs" / f"{name}.log").write_text(f"a line of {name}\n")

    def heads(*args: str) -> list[str]:
        assert main(["logs", str(run), *args]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("==> ")]

    assert heads("--role", "agg") == [f"==> {run}/logs/{n}.log <==" for n in ("agg-0.n0", "agg-1.n0", "agg-1.n1")]
    assert heads("--role", "agg", "--index", "1") == [f"==> {run}/logs/{n}.log <==" for n in ("agg-1.n0", "agg-1.n1")]
    assert heads("--role", "frontend") == [f"==> {run}/logs/frontend.log <=="]
    for role in ROLES:  # a role with no logs in this run is a clear error, not a usage error
        if role != "agg":
            assert main(["logs", str(run), "--role", role]) == 1
            assert f"no logs for role={role}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["logs", str(run), "--role", "aggregated"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(repr(r) in err for r in (*ROLES, "frontend", "infra")), err
