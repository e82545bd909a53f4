import json
from pathlib import Path

import pytest

from inferx_slurm.benchmark.aiperf import aiperf_argv, summarize
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import Scenario
from inferx_slurm.results.table import format_table

DATA = Path(__file__).parent / "data"


def load(name):
    return json.loads((DATA / name).read_text())


def test_summary_row_from_real_export():
    row = summarize(load("aiperf_profile_export_sample.json"), isl=128, osl=32, concurrency=4,
                    prefill_gpus=2, decode_gpus=1, expected_requests=20)
    assert row["completed"] == 20 and row["failed"] == 0
    assert row["output_throughput"] == pytest.approx(1833.569, rel=1e-3)
    assert row["total_token_throughput"] == pytest.approx(8616.713, rel=1e-3)
    # per GPU over ALL GPUs of the deployment; output over decode GPUs; input over prefill GPUs
    assert row["tput_per_gpu"] == pytest.approx(row["total_token_throughput"] / 3)
    assert row["output_tput_per_gpu"] == pytest.approx(row["output_throughput"] / 1)
    assert row["input_tput_per_gpu"] == pytest.approx(6783.145 / 2, rel=1e-3)
    assert row["mean_ttft_ms"] == pytest.approx(31.363, rel=1e-3)
    assert row["intvty"] == pytest.approx(1000 / row["mean_tpot_ms"])
    for key in ("isl", "osl", "concurrency", "num_prefill_gpu", "num_decode_gpu", "median_ttft_ms", "p99_ttft_ms",
                "median_tpot_ms", "mean_itl_ms"):
        assert row[key] is not None, key


def test_errors_count_as_failed():
    export = load("aiperf_profile_export_partial_errors.json")
    ok, bad = int(export["request_count"]["avg"]), int(export["error_request_count"]["avg"])
    row = summarize(export, isl=128, osl=32, concurrency=4, prefill_gpus=1, decode_gpus=1, expected_requests=ok + bad)
    assert (row["completed"], row["failed"]) == (ok, bad)
    # requests the client never finished are failures too
    row = summarize(export, isl=128, osl=32, concurrency=4, prefill_gpus=1, decode_gpus=1, expected_requests=ok + bad + 5)
    assert row["failed"] == bad + 5


def test_aiperf_command_line():
    r = Recipe.from_dict({"name": "r", "model": {"path": "org/m", "served_name": "m"}, "topology": "1P1D TP1",
                          "benchmark": {"requests_per_concurrency": 3, "min_requests": 10, "args": {"no-server-metrics": True}}})
    argv = aiperf_argv(r, Scenario(isl=8192, osl=1024), 64, url="http://h:8000", artifact_dir="/o", tokenizer="org/m")
    joined = " ".join(argv)
    assert "--synthetic-input-tokens-mean 8192" in joined and "--output-tokens-mean 1024" in joined
    assert "--concurrency 64 --request-count 192" in joined
    assert "--extra-inputs ignore_eos:true" in joined and "--use-server-token-count" in joined
    assert argv[-1] == "--no-server-metrics"


def test_table_formats_missing_values():
    text = format_table([{"isl": 1, "osl": 2, "concurrency": 3, "mean_ttft_ms": None}])
    assert text.splitlines()[1].split()[:3] == ["1", "2", "3"] and "-" in text


def test_run_vs_run_deltas():
    from inferx_slurm.results.table import compare

    base = {"rows": [{"isl": 1024, "osl": 1024, "concurrency": 4, "tput_per_gpu": 100.0, "mean_ttft_ms": 50.0,
                      "mean_tpot_ms": 10.0, "output_tput_per_gpu": 80.0, "intvty": 100.0},
                     {"isl": 1024, "osl": 1024, "concurrency": 8, "tput_per_gpu": 1.0}]}
    new = {"rows": [{"isl": 1024, "osl": 1024, "concurrency": 4, "tput_per_gpu": 110.0, "mean_ttft_ms": 60.0,
                     "mean_tpot_ms": 10.0, "output_tput_per_gpu": None, "intvty": 90.0},
                    {"isl": 8192, "osl": 1024, "concurrency": 4, "tput_per_gpu": 5.0}]}
    lines = compare(base, new).splitlines()
    assert len(lines) == 2  # only the point both runs measured
    text = lines[1]
    assert "+10.0% ok" in text and "+20.0% !!" in text and "-10.0% !!" in text and "+0.0%" in text and " - " in f" {text} "
    assert "no (ISL, OSL, concurrency) point in common" in compare(base, {"rows": []})


def test_long_table_columns_and_long_comparison(tmp_path):
    import subprocess
    import sys

    from inferx_slurm.results.table import LONG_COLUMNS, LONG_DELTA_METRICS, columns_for, compare

    row = {"isl": 128, "osl": 32, "concurrency": 4, "measured_isl": 139.0, "p99.9_ttft_ms": 117.67, "median_e2el_ms": 72.75,
           "std_itl_ms": 3.82, "joules_per_output_token": 0.8112, "power_valid": 1, "tput_per_gpu": 100.0}
    text = format_table([row], LONG_COLUMNS)
    head, cells = text.splitlines()[0], text.splitlines()[1]
    assert "p99.9 TTFT" in head and "med E2EL" in head and "std ITL" in head and "ISL meas" in head and "J/out tok" in head
    assert "117.7" in cells and "72.8" in cells and "3.82" in cells and "139.0" in cells and "0.8112" in cells
    picked = format_table([row], columns_for(["p99.9_ttft_ms", "power_valid", "something_else"])).splitlines()
    assert picked[0].split() == ["p99.9_ttft_ms", "power_valid", "something_else"] and picked[1].split() == ["117.7", "1", "-"]
    worse = {**row, "p99.9_ttft_ms": 2 * 117.67, "joules_per_output_token": 0.4056}
    lines = compare({"rows": [row]}, {"rows": [worse]}, LONG_DELTA_METRICS).splitlines()
    assert "p99.9 TTFT" in lines[0] and "+100.0% !!" in lines[1] and "-50.0% ok" in lines[1]
    (tmp_path / "summary.json").write_text(json.dumps({"name": "n", "topology": "1P1D TP1", "rows": [row]}))
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(tmp_path), "--columns", "concurrency,p99.9_ttft_ms"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.splitlines()[1].split() == ["concurrency", "p99.9_ttft_ms"]
