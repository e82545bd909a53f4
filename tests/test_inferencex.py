"""The result files InferenceX's workflow reads: the whole benchmark_serving key set of the raw
file with its units (ms latencies, s durations), the agg file as its processor makes it (s
latencies, tok/s/user interactivity, the power block), and labels that are never null."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferx_slurm.benchmark.aiperf import point_row
from inferx_slurm.benchmark.records import LATENCY_KEYS, read_records
from inferx_slurm.ci import inferencex as ix
from inferx_slurm.ci.env import from_environ
from inferx_slurm.ci.run import result_labels
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.results import labels as lb

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests/data"
ENERGY = {  # point_energy's fields for a valid point (runtime/energy.py)
    "power_valid": 1, "power_source": "energy_counter", "power_issues": [], "total_gpu_energy_j": 1234.56789,
    "avg_power_w": 308.6419725, "avg_total_gpu_power_w": 617.283945, "joules_per_successful_query": 61.7283945,
    "joules_per_input_token": 0.44408912, "joules_per_output_token": 1.92901233, "joules_per_total_token": 0.3609847,
    "prefill_gpu_energy_j": 600.0, "prefill_avg_power_w": 300.0, "prefill_joules_per_input_token": 0.2158273,
    "decode_gpu_energy_j": 634.56789, "decode_avg_power_w": 317.283945, "decode_joules_per_output_token": 0.99151233,
}


def real_row(**extra):
    """A results row of a real local run (20 requests at concurrency 4, 1P1D TP1), as the driver makes it."""
    d = DATA / "aiperf_c4"
    import json

    row = point_row(json.loads((d / "profile_export_aiperf.json").read_text()), read_records(d / "profile_export.jsonl"),
                    isl=128, osl=32, concurrency=4, prefill_gpus=1, decode_gpus=1, expected_requests=20)
    return {**row, **extra}


def labels(**kw):
    base = dict(hw="gb200", model="inferx/tiny-moe", image="", infmax_model_prefix="tinymoe", framework="dynamo-mocker",
                precision="bf16", spec_decoding="none", recipe_fingerprint="0" * 64)
    return ix.ResultLabels(**{**base, **kw})


def test_raw_file_has_benchmark_servings_whole_key_set_and_units():
    row = real_row(**ENERGY)
    raw = ix.raw_result(row, model="inferx/tiny-moe", job_id="12")
    assert list(raw)[: len(ix.RAW_HEAD)] == list(ix.RAW_HEAD)  # benchmark_serving's keys, in its order
    assert set(LATENCY_KEYS) <= set(raw)
    # milliseconds where the name says so, seconds for the window and its duration
    assert raw["p99.9_ttft_ms"] == row["p99.9_ttft_ms"] and 1 < raw["median_ttft_ms"] < 1000
    assert raw["duration"] == pytest.approx(raw["benchmark_end_time_unix"] - raw["benchmark_start_time_unix"]) and raw["duration"] < 10
    assert raw["output_throughput"] == pytest.approx(raw["total_output_tokens"] / raw["duration"])
    assert (raw["completed"], raw["num_prompts"], raw["total_input_tokens"], raw["total_output_tokens"]) == (20, 20, 2780, 640)
    assert (raw["requested_isl"], raw["measured_isl"], raw["success_rate"]) == (128, 139.0, 1.0)
    assert len(raw["input_lens"]) == len(raw["output_lens"]) == 20
    assert isinstance(raw["completed"], int) and isinstance(raw["total_output_tokens"], int)  # InferenceX's power check wants ints
    # InferenceX converts every key ending in "ms" and inverts every key holding "tpot": only latencies may
    assert {k for k in raw if k.endswith("ms") or "tpot" in k} <= set(LATENCY_KEYS)
    assert all(v is not None for v in raw.values())
    assert raw["power_valid"] == 1 and raw["total_gpu_energy_j"] == ENERGY["total_gpu_energy_j"]


def test_a_zero_tpot_statistic_is_left_out_of_the_raw_file():
    raw = ix.raw_result(real_row(median_tpot_ms=0.0, p90_tpot_ms=0.0), model="m", job_id=None)
    assert "median_tpot_ms" not in raw and "p90_tpot_ms" not in raw and raw["mean_tpot_ms"] > 0


def test_agg_file_is_what_inferencex_makes_of_the_raw_file():
    row = real_row(**ENERGY)
    raw = ix.raw_result(row, model="inferx/tiny-moe", job_id=None)
    agg = ix.agg_result(row, raw, topo=Topology.parse("1P1D TP1"), total_nodes=3, labels=labels())
    for k in LATENCY_KEYS:  # seconds, and interactivity (tok/s/user) from every TPOT statistic
        assert agg[k[:-3]] == pytest.approx(raw[k] / 1000.0)
        if "tpot" in k:
            assert agg[k[:-3].replace("tpot", "intvty")] == pytest.approx(1000.0 / raw[k])
    for k in ix.LABEL_KEYS:
        assert isinstance(agg[k], str), k
    assert agg["disagg"] is True and agg["is_multinode"] is True and agg["conc"] == 4
    for role in ("prefill", "decode"):
        for key in ("tp", "pp", "dcp_size", "pcp_size", "ep", "dp_attention", "num_workers"):
            assert f"{role}_{key}" in agg
    assert (agg["num_prefill_gpu"], agg["num_decode_gpu"]) == (1, 1) and agg["tput_per_gpu"] == row["tput_per_gpu"]
    # the power block: InferenceX's schema version, 3 decimals for W and J, 6 for the rest
    assert (agg["power_metric_schema_version"], agg["power_valid"]) == (2, 1)
    assert agg["total_gpu_energy_j"] == 1234.568 and agg["avg_power_w"] == 308.642 and agg["joules_per_total_token"] == 0.360985
    assert agg["decode_joules_per_output_token"] == 0.991512 and agg["power_source"] == "energy_counter"
    assert "power_invalid_reasons" not in agg and "power_issues" not in agg


def test_invalid_power_keeps_no_measured_value():
    row = real_row(power_valid=0, power_invalid_reasons=["gpu_telemetry_unavailable"])
    raw = ix.raw_result(row, model="m", job_id=None)
    agg = ix.agg_result(row, raw, topo=Topology.parse("1P1D TP1"), total_nodes=3, labels=labels())
    assert (agg["power_valid"], agg["power_invalid_reasons"]) == (0, ["gpu_telemetry_unavailable"])
    assert not set(ix.POWER_KEYS) & set(agg) and not set(ix.POWER_KEYS) & set(raw)


def test_aggregated_layouts_on_one_node_and_on_several():
    row = {**real_row(), "num_prefill_gpu": 0, "num_decode_gpu": 0, "num_agg_gpu": 8}
    raw = ix.raw_result(row, model="m", job_id=None)
    one = ix.agg_result(row, raw, topo=Topology.parse("2A TP4"), total_nodes=1, labels=labels(parallel={"agg": {"dcp": 2}}))
    assert one["is_multinode"] is False and one["disagg"] is False
    assert (one["tp"], one["pp"], one["dcp_size"], one["pcp_size"], one["ep"], one["dp_attention"], one["num_gpus"]) == (4, 1, 2, 1, 1, "false", 8)
    many = ix.agg_result(row, raw, topo=Topology.parse("2A TP8"), total_nodes=2, labels=labels())
    # InferenceX reads a file without _ctx_/_gen_ as all GPUs prefill, none decode
    assert (many["prefill_tp"], many["prefill_num_workers"], many["num_prefill_gpu"]) == (8, 2, 8)
    assert (many["decode_tp"], many["decode_ep"], many["decode_num_workers"], many["num_decode_gpu"]) == (0, 0, 0, 0)


def recipe(**over):
    doc = {"name": "r", "profile": "gb200-nvl72", "model": {"path": "/lustre/models/MiniMax-M3", "served_name": "MiniMaxAI/MiniMax-M3"},
           "topology": "1P1D TP4->TEP8", "container": {"runtime": "pyxis", "image": "nvcr.io#nvidia/ai-dynamo/vllm-runtime:0.6.1"},
           "engine": {"backend": "vllm", "args": {"max-num-seqs": 64}}, "env": {"NCCL_CUMEM_ENABLE": "1", "HF_HUB_CACHE": "/lustre/hf"}}
    for k, v in over.items():
        doc[k] = v
    return Recipe.from_dict(doc)


def test_labels_come_from_the_recipe_when_the_environment_has_none():
    r = recipe()
    assert lb.hardware(r, None) == "gb200" and lb.hardware(r, "gb200-nv") == "gb200-nv"
    assert lb.hardware(recipe(profile="mi355x"), None) == "mi355x" and lb.hardware(recipe(profile="local"), None) == "local"
    assert lb.framework(r) == "dynamo-vllm"
    assert lb.framework(recipe(engine={"backend": "trtllm"})) == "dynamo-trt"
    assert lb.framework(recipe(engine={"backend": "mocker"})) == "dynamo-mocker"
    assert lb.framework(recipe(topology="1A TP8", frontend={"server": "engine"})) == "vllm"
    assert lb.model_prefix(r, None) == "minimaxm3" and lb.model_prefix(r, "mm3") == "mm3"
    assert lb.precision(r, "fp4") == "fp4" and lb.precision(r, None) == "unknown"  # no checkpoint here to read
    assert lb.parallel_sizes(r, "decode") == {"pp": 1, "dcp": 1, "pcp": 1}
    sized = recipe(engine={"backend": "vllm", "args": {"decode-context-parallel-size": 2}, "decode": {"args": {"pipeline-parallel-size": 2}}})
    assert lb.parallel_sizes(sized, "decode") == {"pp": 2, "dcp": 2, "pcp": 1} and lb.parallel_sizes(sized, "prefill")["pp"] == 1
    got = result_labels(r, from_environ({}))
    assert all(isinstance(getattr(got, k), str) and getattr(got, k) != "" for k in ix.LABEL_KEYS)
    assert result_labels(r, from_environ({"RECIPE_FINGERPRINT": "abc123"})).recipe_fingerprint == "abc123"
    assert result_labels(recipe(container={"runtime": "none"}), from_environ({})).image == ""


def test_fingerprint_follows_the_deployment_not_where_or_what_it_measured():
    base = lb.fingerprint(recipe())
    assert len(base) == 64 and base == lb.fingerprint(recipe())
    same = [recipe(name="other"), recipe(slurm={"partition": "batch", "time": "02:00:00"}),
            recipe(benchmark={"concurrency": [1, 2]}), recipe(placement={"port_base": 30000}),
            recipe(env={"NCCL_CUMEM_ENABLE": "1", "HF_HUB_CACHE": "/scratch/hf"}),
            recipe(model={"path": "/scratch/MiniMax-M3", "served_name": "MiniMaxAI/MiniMax-M3"})]
    assert {lb.fingerprint(x) for x in same} == {base}
    different = [recipe(topology="1P2D TP4->TEP8"), recipe(engine={"backend": "vllm", "args": {"max-num-seqs": 128}}),
                 recipe(container={"runtime": "pyxis", "image": "nvcr.io#nvidia/ai-dynamo/vllm-runtime:0.7.0"}),
                 recipe(env={"NCCL_CUMEM_ENABLE": "0"}), recipe(profile="h200")]
    assert len({lb.fingerprint(x) for x in different} | {base}) == len(different) + 1
