"""The full result set from the client's per-request records: numpy-default statistics without
numpy, vLLM benchmark_serving's definitions, the window and token totals, against hand-computed
values and against aiperf's own summary of a real run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from inferx_slurm.benchmark.aiperf import point_row
from inferx_slurm.benchmark.records import LATENCY_KEYS, point_metrics, read_records, stats

DATA = Path(__file__).parent / "data"
T0 = 1_700_000_000.0


def test_statistics_of_a_hand_computed_sample():
    s = stats([40.0, 10.0, 30.0, 20.0])  # order does not matter
    assert s["mean"] == 25.0 and s["median"] == 25.0
    assert s["std"] == pytest.approx(math.sqrt((15**2 + 5**2 + 5**2 + 15**2) / 4))  # population, not sample
    # linear interpolation at index (n-1) p/100 = 2.7, 2.97, 2.997 between 30 and 40
    assert s["p90"] == pytest.approx(37.0) and s["p99"] == pytest.approx(39.7) and s["p99.9"] == pytest.approx(39.97)
    assert stats([7.0]) == {"mean": 7.0, "median": 7.0, "std": 0.0, "p90": 7.0, "p99": 7.0, "p99.9": 7.0}
    assert set(stats([]).values()) == {0.0}  # vLLM: np.mean(x or 0)
    assert stats([1.0, 2.0, 3.0])["median"] == 2.0


def test_statistics_agree_with_numpy_to_the_last_bit():
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 99, 1000, 1001):
        xs = [rng.lognormvariate(3, 1) for _ in range(n)]
        s = stats(xs)
        for p in (90, 99, 99.9):
            assert s[f"p{p:g}"] == float(np.percentile(xs, p)), (n, p)
        assert s["median"] == float(np.median(xs))
        assert s["mean"] == pytest.approx(float(np.mean(xs)), rel=1e-13)
        assert s["std"] == pytest.approx(float(np.std(xs)), rel=1e-12)


def test_point_metrics_from_hand_made_records():
    """Three good requests, one failed, one warm-up (ignored): every number by hand."""
    reqs = read_records(DATA / "aiperf_records_small.jsonl")
    assert len(reqs) == 4  # the warm-up request is not measured
    m = point_metrics(reqs, expected=4)
    assert m["benchmark_start_time_unix"] == pytest.approx(T0) and m["benchmark_end_time_unix"] == pytest.approx(T0 + 0.32)
    assert m["duration"] == pytest.approx(0.32)  # seconds: first request sent to last response
    assert (m["completed"], m["failed"], m["success_rate"]) == (3, 1, 0.75)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (390, 21)
    assert (m["measured_isl"], m["measured_osl"]) == (130.0, 7.0)
    assert m["output_throughput"] == pytest.approx(21 / 0.32) and m["total_token_throughput"] == pytest.approx(411 / 0.32)
    assert m["request_throughput"] == pytest.approx(3 / 0.32)
    assert m["input_lens"] == [130, 140, 120] and m["output_lens"] == [10, 10, 1]
    # TTFT 10, 20, 30 ms
    assert (m["mean_ttft_ms"], m["median_ttft_ms"]) == (20.0, 20.0)
    assert m["p90_ttft_ms"] == pytest.approx(28.0) and m["p99_ttft_ms"] == pytest.approx(29.8)
    # TPOT (E2EL - TTFT) / (out - 1): 90/9 and 180/9; the one-token request has none
    assert (m["mean_tpot_ms"], m["median_tpot_ms"], m["std_tpot_ms"]) == (15.0, 15.0, 5.0)
    assert m["p99.9_tpot_ms"] == pytest.approx(19.99)
    # ITL: the chunk gaps of all requests pooled: 10 20 30 30 90 90
    assert m["mean_itl_ms"] == 45.0 and m["median_itl_ms"] == 30.0 and m["p90_itl_ms"] == 90.0
    assert m["std_itl_ms"] == pytest.approx(math.sqrt(6350 / 6))
    # E2EL 100, 200, 300
    assert m["mean_e2el_ms"] == 200.0 and m["p90_e2el_ms"] == pytest.approx(280.0) and m["p99.9_e2el_ms"] == pytest.approx(299.8)
    assert m["std_e2el_ms"] == pytest.approx(math.sqrt(20000 / 3))
    # a request the client never answered is a failure too
    assert point_metrics(reqs, expected=6)["failed"] == 3
    assert set(LATENCY_KEYS) <= set(m) and len(LATENCY_KEYS) == 24


def test_records_of_a_real_run_agree_with_aiperfs_own_summary():
    """aiperf measures the same per-request quantities: its summary of the same run is what our
    statistics give (its TPOT is `inter_token_latency`, its ITL `inter_chunk_latency`)."""
    d = DATA / "aiperf_c4"
    summary = json.loads((d / "profile_export_aiperf.json").read_text())
    reqs = read_records(d / "profile_export.jsonl")
    m = point_metrics(reqs, expected=20)
    for ours, theirs in (("ttft", "time_to_first_token"), ("tpot", "inter_token_latency"), ("itl", "inter_chunk_latency"),
                         ("e2el", "request_latency")):
        for stat, field in (("mean", "avg"), ("median", "p50"), ("std", "std"), ("p90", "p90"), ("p99", "p99")):
            assert m[f"{stat}_{ours}_ms"] == pytest.approx(summary[theirs][field], rel=1e-12, abs=1e-12), (ours, stat)
    assert m["duration"] == pytest.approx(summary["benchmark_duration"]["avg"], abs=1e-6)
    assert m["total_input_tokens"] == summary["total_isl"]["avg"] == 2780 and m["total_output_tokens"] == 640
    assert m["measured_isl"] == 139.0  # what the server counted for a requested ISL of 128 (chat template)

    row = point_row(summary, reqs, isl=128, osl=32, concurrency=4, prefill_gpus=1, decode_gpus=1, expected_requests=20)
    assert row["latency_source"] == "per-request records"
    assert row["tput_per_gpu"] == pytest.approx(m["total_token_throughput"] / 2)
    assert row["output_tput_per_gpu"] == pytest.approx(m["output_throughput"])
    assert row["intvty"] == pytest.approx(1000.0 / m["mean_tpot_ms"])
    assert row["benchmark_end_time_unix"] - row["benchmark_start_time_unix"] == pytest.approx(row["duration"])
    without = point_row(summary, None, isl=128, osl=32, concurrency=4, prefill_gpus=1, decode_gpus=1, expected_requests=20)
    assert without["latency_source"] == "aiperf summary" and "p99.9_ttft_ms" not in without


def test_a_torn_last_line_and_a_missing_file(tmp_path):
    text = (DATA / "aiperf_records_small.jsonl").read_text()
    (tmp_path / "r.jsonl").write_text(text + '{"metadata": {"request_start_ns": 1')
    assert len(read_records(tmp_path / "r.jsonl")) == 4
    assert read_records(tmp_path / "none.jsonl") is None
    assert point_metrics([], expected=5) == {"completed": 0, "failed": 5, "success_rate": 0.0}
