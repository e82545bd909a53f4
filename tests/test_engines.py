import pytest

from inferx_slurm.engines import node_commands
from inferx_slurm.engines.common import cuda_graph_sizes, max_model_len
from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.schema import Recipe


def recipe(topology, backend="vllm", **extra):
    base = {"name": "r", "profile": "gb200-nvl72", "model": {"path": "org/M", "served_name": "m"}, "topology": topology,
            "engine": {"backend": backend}, "benchmark": {"scenarios": ["8k1k"], "concurrency": [1, 4, 48]}}
    for k, v in extra.items():
        base[k] = {**base.get(k, {}), **v}
    return Recipe.from_dict(base)


def argmap(argv):
    out, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[a[2:]] = argv[i + 1]
                i += 2
                continue
            out[a[2:]] = True
        i += 1
    return out


def test_max_model_len_and_graph_sizes():
    assert max_model_len(8192, 1024) == 9472
    assert max_model_len(1024, 1024) == 2304
    assert max_model_len(1000, 1000, 64) == 2304
    assert cuda_graph_sizes(48) == [1, 2, 4, 8, 16, 32, 64]
    assert cuda_graph_sizes(1) == [1]


def test_vllm_dep_multi_node_flags():
    r = recipe("1P1D DEP8->DEP16")
    plan = plan_recipe(r)
    dec = [c for w in plan.workers if w.role == "decode" for c in node_commands(r, plan, w)]
    assert len(dec) == 4
    first, third = argmap(dec[0].argv), argmap(dec[2].argv)
    assert first["data-parallel-size"] == "16" and first["data-parallel-size-local"] == "4"
    assert first["data-parallel-start-rank"] == "0" and "headless" not in first
    assert third["data-parallel-start-rank"] == "8" and third["headless"] is True
    assert first["data-parallel-address"] == "${LEADER_ADDR}"
    assert first["enable-expert-parallel"] is True and first["tensor-parallel-size"] == "1"
    assert first["max-model-len"] == "9472"
    assert first["kv-transfer-config"] == '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
    assert first["disaggregation-mode"] == "decode"
    assert first["compilation-config"] == '{"cudagraph_capture_sizes":[1,2,4,8,16,32,64]}'


def test_vllm_tep_multi_node_uses_nnodes():
    r = recipe("1P1D TP4->TEP8")
    plan = plan_recipe(r)
    pre = node_commands(r, plan, plan.workers[0])
    assert len(pre) == 1
    p = argmap(pre[0].argv)
    assert p["tensor-parallel-size"] == "4" and "enable-expert-parallel" not in p and "compilation-config" not in p
    d = [argmap(c.argv) for c in node_commands(r, plan, plan.workers[1])]
    assert d[0]["tensor-parallel-size"] == "8" and d[0]["enable-expert-parallel"] is True
    assert (d[0]["nnodes"], d[0]["node-rank"], d[1]["node-rank"]) == ("2", "0", "1")
    assert d[1]["headless"] is True


def test_user_args_win_and_provenance_recorded():
    r = recipe("1P1D TP4", engine={"args": {"max-model-len": 4096, "block-size": 64}, "decode": {"args": {"max-model-len": 2048, "enforce-eager": True, "no-x": False}}})
    plan = plan_recipe(r)
    dec = node_commands(r, plan, plan.workers[1])[0]
    src = {a.flag: (a.value, a.source) for a in dec.args}
    assert src["max-model-len"] == (2048, "engine.decode.args")
    assert src["block-size"] == (64, "engine.args")
    assert src["tensor-parallel-size"] == (4, "derived")
    assert "--no-x" not in dec.argv and "--enforce-eager" in dec.argv
    pre = node_commands(r, plan, plan.workers[0])[0]
    assert {a.flag: a.value for a in pre.args}["max-model-len"] == 4096


def test_sglang_and_mocker_and_trtllm():
    r = recipe("1P1D DEP8->TEP4", backend="sglang")
    plan = plan_recipe(r)
    p = argmap(node_commands(r, plan, plan.workers[0])[1].argv)
    assert p["dp-size"] == "8" and p["enable-dp-attention"] is True and p["node-rank"] == "1"
    # the rendezvous port the leader took at start (placement.port_base auto), or the plan's
    assert p["dist-init-addr"] == '${LEADER_ADDR}:${INFERX_RENDEZVOUS_PORT}'
    fixed = r.with_overrides({"placement.port_base": 20000})
    fp = plan_recipe(fixed)
    assert argmap(node_commands(fixed, fp, fp.workers[0])[1].argv)["dist-init-addr"].endswith(f":{fp.workers[0].ports.rendezvous}")
    m = recipe("1P1D TP4->DEP8", backend="mocker")
    mp = plan_recipe(m)
    cmds = node_commands(m, mp, mp.workers[1])
    assert cmds[0].argv[:3] == ["python3", "-m", "dynamo.mocker"]
    assert cmds[1].argv == ["sleep", "infinity"]
    with pytest.raises(RecipeError, match="MPI"):
        t = recipe("1P1D TP4->TEP8", backend="trtllm")
        tp = plan_recipe(t)
        node_commands(t, tp, tp.workers[1])


@pytest.mark.parametrize("backend,module,timeout,needs", [
    ("vllm", "dynamo.vllm", 1800, {"prefill": ["vllm", "dynamo", "nixl"], "agg": ["vllm", "dynamo"]}),
    ("sglang", "dynamo.sglang", 1800, {"prefill": ["sglang", "dynamo", "nixl"], "agg": ["sglang", "dynamo"]}),
    ("trtllm", "dynamo.trtllm", 2400, {"prefill": ["trtllm", "dynamo"], "agg": ["trtllm", "dynamo"]}),
    ("mocker", "dynamo.mocker", 120, {"prefill": ["dynamo"], "agg": ["dynamo"]}),
])
def test_each_backend_module_says_what_it_runs_and_needs(backend, module, timeout, needs):
    from inferx_slurm.engines import BACKENDS, entry_point, preflight_needs, startup_timeout
    from inferx_slurm.recipe.sections import Backend
    from inferx_slurm.runtime.identity_probe import NEEDS

    assert set(BACKENDS) == set(Backend)
    disagg, agg = recipe("1P1D TP4", backend=backend), recipe("1A TP4", backend=backend)
    assert entry_point(disagg) == ["-m", module]
    assert startup_timeout(disagg, "decode") == timeout
    assert startup_timeout(recipe("1P1D TP4", backend=backend, engine={"decode": {"startup_timeout_s": 7}}), "decode") == 7
    assert preflight_needs(disagg, "prefill") == needs["prefill"] and preflight_needs(agg, "agg") == needs["agg"]
    forced = recipe("1A TP4", backend=backend, engine={"require_nixl": True})
    assert preflight_needs(forced, "agg")[-1] == "nixl"
    assert set(BACKENDS[Backend(backend)].PREFLIGHT_NEEDS) <= set(NEEDS)  # names the probe on the node knows


def test_memory_settings_default_per_backend_when_flags_are_unset():
    from inferx_slurm.engines import engine_memory

    got = {}
    for backend in ("vllm", "sglang", "trtllm", "mocker"):
        r = recipe("1A TEP4", backend=backend)
        got[backend] = engine_memory(r, plan_recipe(r), "agg")
    vllm, sglang, trtllm = got["vllm"], got["sglang"], got["trtllm"]
    assert got["mocker"] is None
    assert (vllm.fraction, vllm.fraction_flag, vllm.max_seqs, vllm.max_batched_tokens) == (0.9, "gpu-memory-utilization", 1024, 8192)
    assert vllm.capture_sizes == [1, 2, 4, 8, 16, 32, 64] and vllm.graphs_follow_concurrency  # derived from concurrency 48
    assert (sglang.fraction, sglang.fraction_of, sglang.max_seqs, sglang.capture_sizes[-1]) == (0.85, "static", 1024, 256)
    assert (trtllm.fraction, trtllm.fraction_of, trtllm.max_seqs, trtllm.capture_sizes[-1]) == (0.9, "free", 2048, 128)
    eager = recipe("1A TEP4", engine={"args": {"enforce-eager": True, "max-num-seqs": 64, "kv-cache-dtype": "fp8"}})
    m = engine_memory(eager, plan_recipe(eager), "agg")
    assert (m.capture_sizes, m.max_seqs, m.kv_dtype_bytes, m.block_size) == ([], 64, 1, 128)
    capped = recipe("1A TEP4", engine={"args": {"compilation-config": {}, "max-num-seqs": 8}})
    assert engine_memory(capped, plan_recipe(capped), "agg").capture_sizes == [1, 2, 4, 8, 16]
