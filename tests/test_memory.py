"""The memory planner on checkpoints whose headers describe MiniMax-M3's full shapes (sparse data),
calibrated on the seeds: H100 DEP8 refused, TP8/TEP8 accepted; H200 DEP8 through concurrency
1024 at 1k1k; GB200 TP2 prefill refused, TP4 accepted."""

import json
import struct
import subprocess
import sys

import pytest
import yaml

from checkpoints import minimax_m3_mxfp8
from inferx_slurm.planning.checkpoint import read_checkpoint
from inferx_slurm.errors import RecipeError
from inferx_slurm.planning.feasibility import footprint, memory_plan, require_fit
from inferx_slurm.planning.footprint import Architecture
from inferx_slurm.planning.memory import held_format
from inferx_slurm.recipe.profiles import PROFILES
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.sweeps.expand import expand


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    return minimax_m3_mxfp8(tmp_path_factory.mktemp("m3") / "MiniMax-M3-MXFP8", shards=60)


def write_recipe(tmp_path, m3, profile, topology, conc, scenario="1k1k", **extra):
    doc = {"name": "m3", "profile": profile, "model": {"path": str(m3)}, "topology": topology,
           "engine": {"args": {"block-size": 128, "language-model-only": True}},
           "benchmark": {"scenarios": [scenario], "concurrency": conc}, **extra}
    p = tmp_path / f"{profile}-{topology.replace(' ', '_').replace('>', '')}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def cli(*args):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *map(str, args)], capture_output=True, text=True)


def test_headers_give_every_tensor_without_the_weights(m3):
    ck = read_checkpoint(m3)
    assert ck.shards == 60 and len(ck.tensors) > 40_000
    # The shards are holes: the whole 443 GB checkpoint occupies a few MB on disk.
    assert sum(p.stat().st_blocks * 512 for p in m3.glob("*.safetensors")) < 50e6
    fp = footprint(Recipe.from_dict({"name": "x", "model": {"path": str(m3)}, "topology": "1P1D TP8"}))
    gb = {(g.kind, g.format): round(g.bytes / 1e9, 1) for g in fp.groups}
    assert gb[("expert", "mxfp8")] == 426.0  # 57 MoE layers x 128 experts x 3 x 6144 x 3072, + E8M0 scales
    assert gb[("dense", "mxfp8")] == 10.6     # attention, shared experts, dense MLPs: "~10 GB dense in FP8"
    assert gb[("embed", "bf16")] == 4.9 and gb[("vision", "bf16")] == 1.3
    assert 440 < fp.stored() / 1e9 < 447      # seed 004: "~444 GB"
    a = fp.arch
    assert (a.layers, a.kv_heads, a.head_dim, a.index_layers, a.experts) == (60, 4, 128, 57, 128)


def test_h100_dep8_refused_naming_role_numbers_and_fix(tmp_path, m3):
    out = cli("plan", write_recipe(tmp_path, m3, "h100", "1P1D TEP8->DEP8", [4, 64, 256]))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    err = out.stderr
    assert "topology.decode" in err and "no room for KV cache" in err
    # ~21 GB of BF16-dequantized dense weights on every DP rank next to a ~53 GB expert shard (seed 004).
    assert "dense 21.2" in err and "experts 53.3" in err and "budget of 72.0 GB (80 GB x 0.90 gpu-memory-utilization)" in err
    assert "smallest change that fits: TEP8 instead of DEP8 (same 8 GPUs" in err and "DEP16" in err
    assert "decode   DEP8" in out.stdout and "NO KV ROOM" in out.stdout


@pytest.mark.parametrize("topology", ["1P1D TP8", "1P1D TEP8"])
def test_h100_tp8_and_tep8_accepted(tmp_path, m3, topology):
    out = cli("plan", write_recipe(tmp_path, m3, "h100", topology, [4, 16, 64]))
    assert out.returncode == 0, out.stderr
    assert "NO KV ROOM" not in out.stdout and "warning" not in out.stderr
    doc = json.loads(cli("plan", write_recipe(tmp_path, m3, "h100", topology, [4, 16, 64]), "--json").stdout)
    for r in doc["memory"]["roles"]:
        assert 55 < r["weights_gb"] < 58  # seed 004: "~56 GB of each 80 GB GPU"
        assert r["verdict"] == "fits" and r["kv_gb"] > 2


def test_h200_dep8_accepted_through_1024_at_1k1k(tmp_path, m3):
    path = write_recipe(tmp_path, m3, "h200", "1P1D TEP8->DEP8", [64, 256, 1024])
    out = cli("plan", path)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    doc = json.loads(cli("plan", path, "--json").stdout)
    dec = next(r for r in doc["memory"]["roles"] if r["role"] == "decode")
    assert dec["verdict"] == "fits" and dec["max_concurrency"]["1k1k"] >= 1024
    assert all(p["fits"] for p in dec["points"]) and [p["concurrency"] for p in dec["points"]] == [64, 256, 1024]
    # The table shows the same numbers as the JSON.
    row = next(line for line in out.stdout.splitlines() if line.startswith("decode "))
    assert f"{dec['kv_gb']:.1f}" in row and str(dec["tokens_per_rank"]) in row and str(dec["max_concurrency"]["1k1k"]) in row


def test_gb200_tp2_prefill_refused_tp4_accepted(tmp_path, m3):
    bad = cli("plan", write_recipe(tmp_path, m3, "gb200-nvl72", "1P1D TP2->TEP8", [1, 4, 16], "8k1k"))
    assert bad.returncode == 2 and "topology.prefill" in bad.stderr and "TP4 instead of TP2" in bad.stderr
    assert "topology.decode" not in bad.stderr
    ok = cli("plan", write_recipe(tmp_path, m3, "gb200-nvl72", "1P1D TP4->TEP8", [1, 4, 16], "8k1k"), "--json")
    assert ok.returncode == 0, ok.stderr
    roles = {r["role"]: r for r in json.loads(ok.stdout)["memory"]["roles"]}
    # Blackwell holds MXFP8 as stored: nothing dequantized.
    assert roles["prefill"]["held_as"] == {} and 108 < roles["prefill"]["weights_gb"] < 113


def test_beyond_kv_capacity_warns_in_plan_and_dry_run_refused_by_launch(tmp_path, m3):
    path = write_recipe(tmp_path, m3, "h200", "1P1D TEP8->DEP8", [64, 2048])
    plan = cli("plan", path)
    assert plan.returncode == 0 and "warning: decode DEP8: 1k1k at concurrency 2048" in plan.stderr
    dry = cli("launch", path, "--dry-run")
    assert dry.returncode == 0 and "concurrency 2048" in dry.stderr and "#SBATCH" in dry.stdout
    res = tmp_path / "results"
    out = cli("launch", path, "--results-dir", res)
    assert out.returncode == 2 and "pass --force" in out.stderr and "Traceback" not in out.stderr
    assert not res.exists()
    r = Recipe.load(path)
    with pytest.raises(RecipeError):
        require_fit(r)
    assert require_fit(r, force=True).role("decode").verdict == "over_capacity"


def test_sweep_lists_and_skips_points_beyond_capacity(tmp_path, m3, capsys):
    from inferx_slurm.job.deployment import build_deployment
    from inferx_slurm.reporting import Collector
    from inferx_slurm.sweeps.submit import fit_deployments

    path = write_recipe(tmp_path, m3, "h200", "1P1D TEP8->DEP8", [64, 2048],
                        sweep={"topologies": ["1P1D TEP8->DEP8", "1P1D TEP8"], "concurrency": [64, 2048]})
    deps = [build_deployment(p.recipe, tmp_path / "run" / p.name) for p in expand(Recipe.load(path))]
    said = Collector()
    kept = fit_deployments(deps, dry_run=False, force=False, sweep=True, reporter=said)
    assert [d.recipe.benchmark.concurrency for d in kept] == [[64], [64]]
    # the narrowed deployments are built for what they serve: engines sized for concurrency 64
    assert all(d.memory and not d.memory.over_capacity for d in kept)
    # the reporter hears every skipped point; nothing is printed
    assert sum(w.startswith("skipping:") for w in said.warnings) >= 2 and any("concurrency 2048" in w for w in said.warnings)
    assert capsys.readouterr().err == ""
    forced = fit_deployments(deps, dry_run=False, force=True, sweep=True, reporter=said)
    assert [d.recipe.benchmark.concurrency for d in forced] == [[64, 2048], [64, 2048]]
    assert forced == deps  # kept as built


def test_recipe_split_matches_the_checkpoint(m3):
    ck = read_checkpoint(m3)
    stated = Recipe.from_dict({
        "name": "x", "profile": "h100", "topology": "1P1D TEP8->DEP8",
        "model": {"path": "MiniMaxAI/MiniMax-M3-MXFP8", "memory": {
            "expert_gb": 426.0, "dense_gb": 10.6, "embed_gb": 4.9, "format": "mxfp8", "config": ck.config}},
        "engine": {"args": {"language-model-only": True}},
    })
    mp = memory_plan(stated)
    assert mp.source == "model.memory" and mp.errors and mp.errors[0].field == "topology.decode"
    assert mp.errors[0].value == "1P1D TEP8->DEP8" and mp.errors[0].valid.startswith("no room for KV cache")
    local = memory_plan(stated.with_overrides({"model.path": str(m3), "model.memory": None}))
    # The stated split calls all 10.6 GB MXFP8; the checkpoint keeps 0.5 GB of it (norms, indexer) in BF16.
    assert abs(mp.role("decode").weights_gb - local.role("decode").weights_gb) < 1.0


def test_kv_bytes_for_gqa_mla_and_sliding_window():
    gqa = Architecture.from_config({"num_hidden_layers": 62, "hidden_size": 3072, "num_attention_heads": 48,
                                    "num_key_value_heads": 8, "head_dim": 128})
    assert gqa.kv_bytes_per_token(tp=1, kv_bytes=2) == 62 * 2 * 8 * 128 * 2
    assert gqa.kv_bytes_per_token(tp=16, kv_bytes=2) == 62 * 2 * 1 * 128 * 2  # heads replicated past 8 ranks
    mla = Architecture.from_config({"num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
                                    "kv_lora_rank": 512, "qk_rope_head_dim": 64})
    assert mla.kv_bytes_per_token(tp=8, kv_bytes=1) == 61 * 576
    swa = Architecture.from_config({"num_hidden_layers": 4, "hidden_size": 1024, "num_attention_heads": 8,
                                    "num_key_value_heads": 2, "sliding_window": 512,
                                    "layer_types": ["sliding_attention", "full_attention"] * 2})
    per_layer = 2 * 2 * 128 * 2
    assert swa.kv_bytes_per_request(4096, tp=1, kv_bytes=2) == (2 * 4096 + 2 * 512) * per_layer
    assert Architecture.from_config({"hidden_size": 8}) is None


def test_profiles_say_which_formats_run_natively():
    h100, gb200, mi300x, mi355x = (PROFILES[n] for n in ("h100", "gb200-nvl72", "mi300x", "mi355x"))
    hold = lambda p, kind, fmt: held_format(kind, fmt, p.native_formats, p.moe_weight_only_formats)  # noqa: E731
    assert hold(h100, "dense", "mxfp8") == "bf16" and hold(h100, "expert", "mxfp8") == "mxfp8"
    assert hold(h100, "dense", "fp8") == "fp8"
    assert hold(gb200, "dense", "nvfp4") == "nvfp4" and hold(gb200, "dense", "mxfp8") == "mxfp8"
    assert hold(mi300x, "expert", "mxfp8") == "bf16" and hold(mi300x, "dense", "fp8") == "fp8"
    assert hold(mi355x, "expert", "mxfp4") == "mxfp4" and hold(mi355x, "dense", "nvfp4") == "bf16"


def test_broken_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{")
    with pytest.raises(RecipeError, match="truncated inside its safetensors header"):
        read_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(RecipeError, match="not valid JSON"):
        read_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(RecipeError, match="names shards that are missing: model-00001.safetensors"):
        read_checkpoint(tmp_path)
    assert read_checkpoint(tmp_path / "absent") is None
