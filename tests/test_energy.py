"""Energy of a benchmark point: the energy counter read at the window's ends, sampled power
integrated where a GPU has no counter, sums per role, joules per token, and why power is not
valid when it is not. Every number by hand."""

from __future__ import annotations

import json
import threading
import time

import pytest

from inferx_slurm.planning.placement import plan_topology
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.runtime.energy import (
    GpuRef, NodeLog, PowerReason, counter_joules, gpus_of, parse_node_log, point_energy, point_power, power_joules,
)

RAMP = [(0.0, 100.0), (1.0, 200.0), (2.0, 300.0), (3.0, 400.0)]  # W, rising 100 W/s


def test_counter_is_read_at_the_window_ends_interpolated():
    counter = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0), (3.0, 600.0)]  # J
    # 50 J at 0.5 s, 450 J at 2.5 s
    assert counter_joules(counter, 0.5, 2.5) == (pytest.approx(400.0), None)
    assert counter_joules(counter, 1.0, 2.0) == (200.0, None)  # on the samples themselves


def test_power_integral_is_trapezoids_with_interpolated_ends():
    # 100 + 100 t W from 0.5 to 2.5 s: [100 t + 50 t^2] = 562.5 - 62.5
    assert power_joules(RAMP, 0.5, 2.5) == (pytest.approx(500.0), None)
    assert power_joules([(0.0, 300.0), (2.5, 300.0), (5.0, 300.0), (7.5, 300.0)], 2.0, 7.0) == (pytest.approx(1500.0), None)


def test_window_not_covered_gaps_and_resets_are_refused():
    assert power_joules(RAMP, -1.0, 2.0) == (None, PowerReason.not_bracketed)
    assert power_joules(RAMP, 1.0, 3.5) == (None, PowerReason.not_bracketed)
    gappy = [(0.0, 1.0), (1.0, 1.0), (5.0, 1.0), (6.0, 1.0)]
    assert power_joules(gappy, 0.5, 5.5) == (None, PowerReason.gap)
    assert power_joules(gappy, 0.2, 0.8) == (pytest.approx(0.6), None)  # the gap is outside this window
    assert counter_joules([(0.0, 0.0), (1.0, 100.0), (2.0, 50.0), (3.0, 150.0)], 0.5, 2.5) == (None, PowerReason.counter_reset)
    assert counter_joules([], 0.0, 1.0) == (None, PowerReason.counter_missing)
    assert power_joules([(0.0, 1.0)], 0.0, 0.0) == (None, PowerReason.too_few)


def constant(t0, t1, watts, counter=True, step=1.0):
    """Samples of a GPU drawing `watts` from t0 to t1: its counter and its power."""
    ts = [t0 + i * step for i in range(int((t1 - t0) / step) + 1)]
    return ([(t, watts * t) for t in ts] if counter else []), [(t, float(watts)) for t in ts]


def node(*gpus):
    log = NodeLog(source="nvml", last_t=30.0)
    for i, (counter, power) in enumerate(gpus):
        if counter:
            log.counters[i] = counter
        log.power[i] = power
    return log


GPUS = [GpuRef("prefill", "a", 0), GpuRef("prefill", "a", 1), GpuRef("decode", "b", 0)]
COUNTS = {"completed": 10, "input_tokens": 1000, "output_tokens": 500}


def test_point_energy_per_role_and_per_token():
    logs = {"a": node(constant(5, 25, 300), constant(5, 25, 310)), "b": node(constant(5, 25, 400, counter=False))}
    e = point_energy(GPUS, logs, start=10.0, end=20.0, **COUNTS)
    assert e["power_valid"] == 1 and "power_invalid_reasons" not in e
    # 300 W + 310 W by their counters, 400 W by its sampled power, over 10 s
    assert e["total_gpu_energy_j"] == pytest.approx(10100.0)
    assert e["avg_total_gpu_power_w"] == pytest.approx(1010.0) and e["avg_power_w"] == pytest.approx(1010.0 / 3)
    assert e["joules_per_successful_query"] == pytest.approx(1010.0)
    assert e["joules_per_input_token"] == pytest.approx(10.1) and e["joules_per_output_token"] == pytest.approx(20.2)
    assert e["joules_per_total_token"] == pytest.approx(10100.0 / 1500)
    assert (e["prefill_gpu_energy_j"], e["prefill_avg_power_w"], e["prefill_joules_per_input_token"]) == pytest.approx((6100.0, 305.0, 6.1))
    assert (e["decode_gpu_energy_j"], e["decode_avg_power_w"], e["decode_joules_per_output_token"]) == pytest.approx((4000.0, 400.0, 8.0))
    # the decode GPU had no counter: its energy is the power integral, and the point says so
    assert e["power_source"] == "energy_counter+power_integral"
    assert e["power_issues"] == ["decode GPU 0 on b: energy_counter_missing; sampled power integrated"]
    assert [g["source"] for g in e["gpu_energy"]] == ["energy_counter", "energy_counter", "power_integral"]
    both = point_energy(GPUS[:2], logs, start=10.0, end=20.0, **COUNTS)
    assert both["power_source"] == "energy_counter" and "decode_gpu_energy_j" not in both


@pytest.mark.parametrize("logs,start,end,counts,reasons", [
    # no sampler log on a node that runs a worker
    ({"a": node(constant(5, 25, 300), constant(5, 25, 300)), "b": None}, 10.0, 20.0, COUNTS, ["telemetry_file_missing"]),
    # the sampler there found no GPU library
    ({"a": node(constant(5, 25, 300), constant(5, 25, 300)), "b": NodeLog(reason="NVML: ...; amdsmi: ...")}, 10.0, 20.0, COUNTS,
     ["gpu_telemetry_unavailable"]),
    # a GPU the plan uses is not in the samples
    ({"a": node(constant(5, 25, 300)), "b": node(constant(5, 25, 400))}, 10.0, 20.0, COUNTS, ["expected_gpu_count_mismatch"]),
    # the samples end before the window does (counter and power alike)
    ({"a": node(constant(5, 25, 300), constant(5, 25, 300)), "b": node(constant(5, 15, 400))}, 10.0, 20.0, COUNTS,
     ["benchmark_window_not_bracketed"]),
    # neither a counter nor power for that GPU, a bad window, no tokens
    ({"a": node(constant(5, 25, 300), constant(5, 25, 300)), "b": node(([], []))}, 10.0, 20.0, COUNTS,
     ["energy_counter_missing", "no_usable_power_samples"]),
    ({}, 20.0, 10.0, COUNTS, ["invalid_benchmark_window"]),
    ({"a": node(constant(5, 25, 300), constant(5, 25, 300)), "b": node(constant(5, 25, 400))}, 10.0, 20.0,
     {"completed": 0, "input_tokens": 10, "output_tokens": 0}, ["invalid_output_token_count", "invalid_successful_query_count"]),
])
def test_power_is_not_valid_and_says_why(logs, start, end, counts, reasons):
    e = point_energy(GPUS, logs, start=start, end=end, **counts)
    assert e["power_valid"] == 0 and e["power_invalid_reasons"] == reasons
    assert not {k for k in e if k.endswith(("_j", "_w")) or k.startswith("joules_per")}  # nothing measured is reported


def write_log(path, samples, header=None):
    lines = [header or {"t": samples[0][0] - 1, "host": path.stem[4:], "nvml": True, "source": "nvml", "gpus": 1}]
    lines += [{"t": t, "gpus": [{"i": 0, "energy_j": 250.0 * t, "power_w": 250.0}]} for t, _ in samples]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_point_power_reads_the_logs_and_waits_for_the_sample_after_the_window(tmp_path):
    plan = plan_topology(Topology.parse("1P1D TP1"), gpus_per_node=1)
    assert [str(g) for g in gpus_of(plan, ["a", "b"])] == ["prefill GPU 0 on a", "decode GPU 0 on b"]
    now = time.time()
    row = {"benchmark_start_time_unix": now - 5, "benchmark_end_time_unix": now + 0.5, "completed": 4,
           "total_input_tokens": 400, "total_output_tokens": 100}
    for h in ("a", "b"):
        write_log(tmp_path / f"gpu-{h}.jsonl", [(now - 6 + i, None) for i in range(7)])
    assert point_power(tmp_path, ["a", "b"], plan, row)["power_invalid_reasons"] == ["benchmark_window_not_bracketed"]

    def late_sample():
        time.sleep(1.0)
        for h in ("a", "b"):
            with open(tmp_path / f"gpu-{h}.jsonl", "a") as f:
                f.write(json.dumps({"t": now + 1.0, "gpus": [{"i": 0, "energy_j": 250.0 * (now + 1.0), "power_w": 250.0}]}) + "\n")

    threading.Thread(target=late_sample).start()
    e = point_power(tmp_path, ["a", "b"], plan, row, wait_s=5.0)
    assert e["power_valid"] == 1 and e["power_source"] == "energy_counter"
    assert e["total_gpu_energy_j"] == pytest.approx(2 * 250.0 * 5.5, rel=1e-9)
    assert e["joules_per_output_token"] == pytest.approx(2 * 250.0 * 5.5 / 100, rel=1e-9)


def test_a_sampler_log_with_a_torn_line_and_the_old_header():
    lines = ['{"t": 1.0, "host": "n", "nvml": true, "gpus": 1}',
             '{"t": 2.0, "gpus": [{"i": 0, "power_w": 100.0}]}', '{"t": 3.0, "gpus": [{"i"']
    log = parse_node_log(lines, 0.0, 10.0)
    assert log.source == "nvml" and log.power == {0: [(2.0, 100.0)]} and log.counters == {}
