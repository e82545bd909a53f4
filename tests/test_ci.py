"""`inferx-slurm ci`: environment mapping, result files, report, baseline gate, archive, the
identity check, and simulated GitHub Actions runs on the local cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from inferx_slurm.ci import inferencex as ix
from inferx_slurm.ci import report as cr
from inferx_slurm.results.baseline import DEFAULT_THRESHOLDS, gate, load_rows, parse_thresholds
from inferx_slurm.ci.env import SPEC_DECODING, check_against_recipe, from_environ
from inferx_slurm.results.archive import write_archive
from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.topology import Topology

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes/disagg/local/mocker-1p1d.yaml"
DYNAMO_PYTHON = os.environ.get("INFERX_DYNAMO_PYTHON", "/opt/dynamo-venv/bin/python")

GB200_POINT = {
    "MODEL": "MiniMaxAI/MiniMax-M3", "MODEL_PATH": "/lustre/models/MiniMax-M3", "IMAGE": "nvcr.io#nvidia/ai-dynamo/vllm-runtime:0.6.1",
    "ISL": "8192", "OSL": "1024", "CONC_LIST": "64 128 256", "FRAMEWORK": "dynamo-vllm", "PRECISION": "fp8",
    "PREFILL_NUM_WORKERS": "2", "PREFILL_TP": "8", "PREFILL_EP": "8", "PREFILL_DP_ATTN": "true",
    "DECODE_NUM_WORKERS": "1", "DECODE_TP": "16", "DECODE_EP": "16", "DECODE_DP_ATTN": "true",
    "DISAGG": "true", "SPEC_DECODING": "none", "RUNNER_NAME": "gb200-nv_0", "RUNNER_TYPE": "gb200-nv",
    "RESULT_FILENAME": "minimaxm3_fp8_dynamo-vllm", "SLURM_PARTITION": "batch", "GITHUB_WORKSPACE": "/ws",
}


def test_inferencex_matrix_point_becomes_overrides():
    e = from_environ(GB200_POINT)
    assert e.sets == {
        "model.path": "/lustre/models/MiniMax-M3",
        "container.image": "nvcr.io#nvidia/ai-dynamo/vllm-runtime:0.6.1",
        "benchmark.scenarios": [{"isl": 8192, "osl": 1024}],
        "benchmark.concurrency": [64, 128, 256],
        "engine.backend": "vllm",
        "topology": "2P1D DEP8->DEP16",
        "slurm.partition": "batch",
        "slurm.job_name": "gb200-nv_0",
    }
    assert e.result_filename == "minimaxm3_fp8_dynamo-vllm" and e.out_dir == "/ws"
    assert e.labels["hw"] == "gb200-nv" and e.labels["model"] == "MiniMaxAI/MiniMax-M3"
    # TEP and TP spellings, and empty values (GitHub renders a missing matrix key as "") are unset.
    e = from_environ({"PREFILL_NUM_WORKERS": "1", "PREFILL_TP": "4", "PREFILL_EP": "1", "DECODE_NUM_WORKERS": "1",
                      "DECODE_TP": "8", "DECODE_EP": "8", "DECODE_DP_ATTN": "false", "IMAGE": "", "CONC": "4"})
    assert e.sets == {"topology": "1P1D TP4->TEP8", "benchmark.concurrency": [4]}


@pytest.mark.parametrize("env,field,says", [
    ({"CONC_LIST": "1 2", "CONC": "3"}, "CONC", "contradicts CONC_LIST"),
    ({"CONC_LIST": "1 two"}, "CONC_LIST", "whole numbers"),
    ({"ISL": "1024"}, "OSL", "set both"),
    ({"FRAMEWORK": "tensorflow"}, "FRAMEWORK", "dynamo-vllm"),
    ({"PREFILL_NUM_WORKERS": "1", "PREFILL_TP": "4"}, "DECODE_NUM_WORKERS", "give both roles"),
    ({"PREFILL_NUM_WORKERS": "1", "PREFILL_TP": "8", "PREFILL_EP": "4", "DECODE_NUM_WORKERS": "1", "DECODE_TP": "8"}, "PREFILL_EP", "TEP8"),
    ({"PREFILL_TP": "4", "DECODE_NUM_WORKERS": "1", "DECODE_TP": "4"}, "PREFILL_NUM_WORKERS", "is needed"),
    ({"DECODE_DP_ATTN": "maybe", "DECODE_NUM_WORKERS": "1", "DECODE_TP": "4", "PREFILL_NUM_WORKERS": "1", "PREFILL_TP": "4"}, "DECODE_DP_ATTN", "true or false"),
    ({"DISAGG": "false", "PREFILL_NUM_WORKERS": "1", "PREFILL_TP": "4", "DECODE_NUM_WORKERS": "1", "DECODE_TP": "4"},
     "DISAGG", "contradicts"),
    ({"SPEC_DECODING": "medusa"}, "SPEC_DECODING", "eagle3"),
])
def test_bad_or_contradictory_environment_names_the_variable(env, field, says):
    with pytest.raises(RecipeError) as e:
        from_environ(env)
    assert e.value.field == field and says in str(e.value)


def cli(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO)


def actions_env(tmp: Path, **extra) -> dict[str, str]:
    (tmp / "ws").mkdir(parents=True, exist_ok=True)
    return {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp / "summary.md"), "GITHUB_OUTPUT": str(tmp / "output.txt"),
            "GITHUB_WORKSPACE": str(tmp / "ws"), **extra}


def outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_variable_table_says_what_is_accepted():
    """The module's table is the CI variables' documentation: DISAGG and SPEC_DECODING take every
    value it lists, and each is checked against what the recipe serves."""
    import re

    from inferx_slurm.ci import env as ci_env
    from inferx_slurm.recipe.schema import Recipe

    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", ci_env.__doc__ or "", re.M)}
    listed = set(re.findall(r"`(\w+)`", rows["SPEC_DECODING"]))
    assert set(SPEC_DECODING) <= listed and "must be `none`" not in rows["SPEC_DECODING"]
    assert {"true", "false"} <= set(re.findall(r"`(\w+)`", rows["DISAGG"]))
    agg = Recipe.load(REPO / "recipes/agg/h200/minimax-m3-tp8-eagle3-1k1k.yaml")
    disagg = Recipe.load(RECIPE)
    for value, recipe in (("false", agg), ("true", disagg)):
        check_against_recipe(from_environ({"DISAGG": value}), recipe)
        with pytest.raises(RecipeError) as e:
            check_against_recipe(from_environ({"DISAGG": value}), disagg if recipe is agg else agg)
        assert e.value.field == "DISAGG"
    for value in SPEC_DECODING:
        env = from_environ({"SPEC_DECODING": value.upper()})
        assert env.spec_decoding == value
        serves = agg if value == "eagle3" else disagg if value == "none" else None
        if serves is not None:
            check_against_recipe(env, serves)
        with pytest.raises(RecipeError) as e:
            check_against_recipe(env, disagg if value != "none" else agg)
        assert e.value.field == "SPEC_DECODING"


def test_environment_error_exits_2_before_submitting(tmp_path):
    env = actions_env(tmp_path, CONC_LIST="1 2", CONC="3", PATH="/usr/bin:/bin")  # no sbatch reachable either
    out = cli("ci", str(RECIPE), "--results-dir", str(tmp_path / "run"), env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "::error title=inferx-slurm recipe (exit 2)::CONC: got '3'" in out.stdout
    assert "FAILED: recipe (exit 2)" in (tmp_path / "summary.md").read_text()
    assert outputs(tmp_path / "output.txt")["exit_code"] == "2"
    assert not (tmp_path / "run").exists()
    # IMAGE for a recipe that runs bare processes would be ignored silently: refused, naming IMAGE.
    out = cli("ci", str(RECIPE), env={"IMAGE": "nvcr.io#nvidia/x:1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "IMAGE: got 'nvcr.io#nvidia/x:1'; the recipe runs bare processes" in out.stdout


def test_example_runner_script_is_one_line_and_its_workflow_speaks_our_variables(tmp_path):
    import yaml

    from inferx_slurm.ci.env import VARIABLES

    script = REPO / "examples/github/launch_gb200-nv.sh"
    commands = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("exec inferx-slurm ci ")
    workflow = yaml.safe_load((REPO / "examples/github/gb200-benchmark.yml").read_text())
    env = set(workflow["jobs"]["benchmark"]["env"])
    assert env - VARIABLES == {"CONFIG_FILE", "BASELINE_DIR"}  # the script's own two
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "inferx-slurm").write_text(f"#!/bin/sh\nexec {sys.executable} -m inferx_slurm \"$@\"\n")
    (bindir / "inferx-slurm").chmod(0o755)
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, "PATH": f"{bindir}:/usr/bin:/bin", "CONFIG_FILE": str(RECIPE), "PREFILL_TP": "4"})
    assert out.returncode == 2 and "PREFILL_NUM_WORKERS: got None; is needed with PREFILL_TP" in out.stdout


def test_inferencex_drop_in_launcher_is_one_call_and_needs_its_recipe(tmp_path):
    script = REPO / "examples/inferencex/launch_gb200-nv.sh"
    commands = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("exec inferx-slurm ci ")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "INFERX_RECIPE names the inferx-slurm recipe" in out.stderr


def test_fault_kinds_map_to_exit_codes():
    assert cr.CATEGORY_EXIT[cr.classify_fault("node_down", "node node2 ...")] == cr.EXIT_INFRA == 3
    assert cr.classify_fault("exited", "infra exited (exit code 1) on host node1.") == "infrastructure"
    assert cr.classify_fault("exited", "prefill worker 0 exited (exit code 3) on host node1.") == "engine"
    assert cr.classify_fault("not_ready", "") == cr.classify_fault("stalled", "") == "engine"
    # A fabric that cannot carry NIXL is the cluster's; an engine whose listener died is the engine's.
    assert cr.CATEGORY_EXIT[cr.classify_fault("fabric", "NIXL fabric preflight failed ...")] == cr.EXIT_INFRA
    assert cr.CATEGORY_EXIT[cr.classify_fault("engine_fatal", "prefill worker 0 ...")] == cr.EXIT_ENGINE
    assert cr.CATEGORY_EXIT[cr.classify_fault("client", "")] == cr.EXIT_BENCHMARK
    assert cr.classify_fault(None, "job 5 ended NODE_FAIL") == "infrastructure"
    assert cr.CATEGORY_EXIT[cr.classify_fault("node_cache", "node1: no room for the weights")] == cr.EXIT_INFRA
    assert len({cr.EXIT_RECIPE, cr.EXIT_INFRA, cr.EXIT_ENGINE, cr.EXIT_REGRESSION, cr.EXIT_BENCHMARK}) == 5


ROW = {"isl": 8192, "osl": 1024, "concurrency": 64, "num_prefill_gpu": 16, "num_decode_gpu": 16, "total_token_throughput": 64000.0,
       "output_throughput": 8000.0, "tput_per_gpu": 2000.0, "output_tput_per_gpu": 500.0, "input_tput_per_gpu": 3500.0,
       "mean_ttft_ms": 800.0, "median_ttft_ms": 750.0, "p99_ttft_ms": 1500.0, "mean_tpot_ms": 20.0, "median_tpot_ms": 25.0,
       "mean_itl_ms": 20.0, "intvty": 50.0, "completed": 640, "failed": 0}


LABELS = ix.ResultLabels(hw="gb200-nv", model="m", image="img", infmax_model_prefix="minimaxm3", framework="dynamo-vllm",
                         precision="fp8", spec_decoding="none", recipe_fingerprint="f" * 64)


def test_result_files_use_inferencex_names_and_units():
    topo = Topology.parse("2P1D DEP8->DEP16")
    # _ctx_ and _gen_ are the prefill and decode GPUs: InferenceX's processor reads them as such
    assert ix.point_name("X", ROW, topo) == "X_isl_8192_osl_1024_conc64_gpus_32_ctx_16_gen_16.json"
    assert ix.logs_name(ROW, topo) == "isl_8192_osl_1024/results_concurrency_64_gpus_32_ctx_16_gen_16.json"
    agg_row = {**ROW, "num_prefill_gpu": 0, "num_decode_gpu": 0, "num_agg_gpu": 8}
    assert ix.point_name("X", agg_row, Topology.parse("1A TP8")) == "X_isl_8192_osl_1024_conc64_gpus_8.json"
    raw = ix.raw_result(ROW, model="m", job_id="7")
    assert raw["max_concurrency"] == 64 and raw["median_ttft_ms"] == 750.0
    agg = ix.agg_result(ROW, raw, topo=topo, total_nodes=8, labels=LABELS)
    assert (agg["conc"], agg["hw"], agg["framework"], agg["disagg"], agg["is_multinode"]) == (64, "gb200-nv", "dynamo-vllm", True, True)
    assert (agg["prefill_tp"], agg["prefill_ep"], agg["prefill_dp_attention"], agg["prefill_num_workers"]) == (8, 8, "true", 2)
    assert (agg["prefill_pp"], agg["prefill_dcp_size"], agg["prefill_pcp_size"]) == (1, 1, 1)
    assert (agg["decode_tp"], agg["decode_num_workers"]) == (16, 1)
    assert agg["median_ttft"] == 0.75 and agg["median_tpot"] == 0.025  # seconds
    assert agg["median_intvty"] == 40.0 and agg["mean_intvty"] == 50.0  # tokens/s/user


def test_baseline_gate_flags_drops_beyond_threshold(tmp_path):
    worse = {**ROW, "tput_per_gpu": 1850.0, "output_tput_per_gpu": 400.0, "median_ttft_ms": 800.0}
    checks, warns = gate([ROW], [worse, {**ROW, "concurrency": 128}], DEFAULT_THRESHOLDS)
    verdict = {c["metric"]: c["regressed"] for c in checks}
    assert verdict == {"tput_per_gpu": False, "output_tput_per_gpu": True, "intvty": False, "median_ttft_ms": False}
    assert warns == ["ISL 8192 OSL 1024 conc 128: not in the baseline; not gated"]
    strict = parse_thresholds(["tput_per_gpu=5", "output_tput_per_gpu=off"])
    assert {c["metric"]: c["regressed"] for c in gate([ROW], [worse], strict)[0]}["tput_per_gpu"] is True
    with pytest.raises(RecipeError, match="--threshold"):
        parse_thresholds(["throughput=5"])
    # An earlier CI run's uploaded agg_*.json files are a baseline too.
    agg = ix.agg_result(ROW, ix.raw_result(ROW, model="m", job_id=None), topo=Topology.parse("1P1D TP8"), total_nodes=4, labels=LABELS)
    (tmp_path / "agg_x.json").write_text(json.dumps(agg))
    rows = load_rows(tmp_path)
    assert rows[0]["median_ttft_ms"] == 750.0 and rows[0]["tput_per_gpu"] == 2000.0
    assert rows[0]["p99_ttft_ms"] == pytest.approx(1500.0)  # every latency of the agg file, back in ms
    assert parse_thresholds(["p99.9_e2el_ms=20"])["p99.9_e2el_ms"] == (False, 20.0)
    with pytest.raises(RecipeError, match="--baseline"):
        load_rows(tmp_path / "nothing-here")


def test_archive_is_bounded_and_keeps_the_end_of_big_logs(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "diagnosis.txt").write_text("decode worker 0 exited\n")
    (run / "logs" / "decode-0.n0.log").write_bytes(os.urandom(3 << 20) + b"\nTHE LAST LINE\n")
    for i in range(6):
        (run / "logs" / f"prefill-{i}.n0.log").write_bytes(os.urandom(2 << 20))
    info = write_archive(run, tmp_path / "results.tar.gz", max_bytes=5 << 20, max_file_bytes=1 << 20)
    assert (tmp_path / "results.tar.gz").stat().st_size <= 5 << 20
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = tar.getnames()
        decode = tar.extractfile("logs/decode-0.n0.log").read()
        manifest = tar.extractfile("ARCHIVE-MANIFEST.txt").read().decode()
    assert names[0] == "diagnosis.txt" and decode.endswith(b"THE LAST LINE\n") and len(decode) == 1 << 20
    assert info["omitted"] and "left out (size limit):" in manifest and "cut to their last bytes:" in manifest


@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvml") / "libnvidia-ml-stub.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(REPO / "tests/stubs/nvml_stub.c")], check=True)
    return out


@pytest.mark.skipif(not Path(DYNAMO_PYTHON).exists(), reason="Dynamo venv not installed (setup_scripts/install.sh)")
def test_identity_probe_reports_from_the_engine_environment(tmp_path, nvml_lib):
    hub = tmp_path / "hub" / "models--org--tiny" / "refs"
    hub.mkdir(parents=True)
    (hub / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    probe = REPO / "inferx_slurm/runtime/identity_probe.py"
    env = {**os.environ, "INFERX_NVML_LIB": str(nvml_lib), "HF_HUB_CACHE": str(tmp_path / "hub")}

    def run(expect):
        return subprocess.run([DYNAMO_PYTHON, str(probe), "--out", str(tmp_path / "p.json"), "--backend", "mocker",
                               "--model", "org/tiny", "--expect", json.dumps(expect)], capture_output=True, text=True, env=env, timeout=60)

    ok = run({"dynamo_version": "1.6.1", "engine_version": "1.6.1", "model_revision": "0123456"})
    assert ok.returncode == 0, ok.stderr
    rep = json.loads((tmp_path / "p.json").read_text())
    assert rep["packages"]["dynamo"] == "1.6.1" and rep["engine"] == {"package": "dynamo", "version": "1.6.1"}
    assert rep["model"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert rep["gpu"] == {"driver": "570.86.15", "cuda": "12.8", "names": ["NVIDIA GB200", "NVIDIA GB200"]}
    bad = run({"dynamo_version": "9.9.9", "nixl_version": "0.7.0", "model_revision": "fedcba9"})
    assert bad.returncode == 3
    assert "Dynamo (ai-dynamo) is 1.6.1 in this worker's environment, but the recipe pins 9.9.9 (expect.dynamo_version)" in bad.stderr
    assert "NIXL is not installed in this worker's environment, but the recipe pins 0.7.0" in bad.stderr
    assert "the model revision is 0123456789abcdef0123456789abcdef01234567" in bad.stderr


@pytest.mark.cluster
def test_simulated_actions_run_writes_every_file_and_a_slowdown_fails_the_gate(cluster, tmp_path, nvml_lib):
    from inferx_slurm.benchmark.records import LATENCY_KEYS

    first = tmp_path / "first"
    # The GPU sampler reads the NVML stand-in: two GPUs at 300 and 310 W with energy counters.
    env = actions_env(first, RESULT_FILENAME="mocker_fp8_dynamo-mocker", RUNNER_TYPE="gb200-nv", PRECISION="fp8",
                      FRAMEWORK="dynamo-mocker", ISL="128", OSL="32", CONC_LIST="1 4", PREFILL_NUM_WORKERS="1", PREFILL_TP="1",
                      DECODE_NUM_WORKERS="1", DECODE_TP="1", RUNNER_NAME="gb200-nv_0", INFERX_NVML_LIB=str(nvml_lib))
    # Through the drop-in for InferenceX's launcher, as its multi-node workflow runs it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "inferx-slurm").write_text(f"#!/bin/sh\nexec {sys.executable} -m inferx_slurm \"$@\"\n")
    (bindir / "inferx-slurm").chmod(0o755)
    out = subprocess.run(["bash", str(REPO / "examples/inferencex/launch_gb200-nv.sh"), "--results-dir", str(first / "run")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, **env, "INFERX_RECIPE": str(RECIPE), "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stdout + out.stderr
    ws = first / "ws"
    stem = "mocker_fp8_dynamo-mocker_isl_128_osl_32_conc{}_gpus_2_ctx_1_gen_1.json"
    # The workflow's "Process result" loop and upload globs, verbatim, over the workspace.
    step = subprocess.run(["bash", "-c", """
        for result_file in ${RESULT_FILENAME}_*.json; do
          gpus=$(echo "$result_file" | sed -n "s/.*_gpus_\\([0-9][0-9]*\\).*\\.json/\\1/p")
          prefill_gpus=$(echo "$result_file" | sed -n "s/.*_ctx_\\([0-9]*\\).*\\.json/\\1/p")
          decode_gpus=$(echo "$result_file" | sed -n "s/.*_gen_\\([0-9]*\\).*\\.json/\\1/p")
          echo "process $result_file G=$gpus P=$prefill_gpus D=$decode_gpus"
        done
        ls -d agg_${RESULT_FILENAME}_*.json LOGS/*/results_*.json multinode_server_logs.tar.gz"""],
        capture_output=True, text=True, cwd=ws, env={**os.environ, "RESULT_FILENAME": "mocker_fp8_dynamo-mocker"})
    assert step.returncode == 0, step.stderr
    assert [line for line in step.stdout.splitlines() if line.startswith("process ")] == [
        f"process {stem.format(c)} G=2 P=1 D=1" for c in (1, 4)]
    assert len(step.stdout.splitlines()) == 2 + 2 + 2 + 1
    rows = {r["concurrency"]: r for r in json.loads((first / "run" / "summary.json").read_text())["rows"]}
    for conc in (1, 4):
        raw = json.loads((ws / stem.format(conc)).read_text())
        agg = json.loads((ws / f"agg_{stem.format(conc)}").read_text())
        assert raw["max_concurrency"] == conc and raw["completed"] >= 10 and raw["failed"] == 0
        assert agg["conc"] == conc and agg["hw"] == "gb200-nv" and agg["framework"] == "dynamo-mocker" and agg["tput_per_gpu"] > 0
        assert 0 < agg["median_ttft"] < 10  # seconds, not milliseconds
        # The whole benchmark_serving key set; a TPOT statistic of 0 (the mock engine streams most
        # tokens of a request in one chunk) is left out for InferenceX's 1000/TPOT, and kept in summary.json.
        assert set(ix.RAW_HEAD) <= set(raw)
        left_out = set(LATENCY_KEYS) - set(raw)
        assert all("tpot" in k and rows[conc][k] == 0.0 for k in left_out), left_out
        assert 0 < raw["duration"] < 60 and raw["benchmark_start_time_unix"] < raw["benchmark_end_time_unix"]
        assert raw["total_output_tokens"] == 32 * raw["completed"] and raw["requested_isl"] == 128 and raw["measured_isl"] > 128
        assert all(v is not None for v in list(raw.values()) + list(agg.values()))
        for k in ("hw", "infmax_model_prefix", "framework", "precision", "spec_decoding", "image", "model", "recipe_fingerprint"):
            assert isinstance(agg[k], str), k
        assert len(agg["recipe_fingerprint"]) == 64 and agg["infmax_model_prefix"] == "tinymoe" and agg["precision"] == "fp8"
        assert {"mean_itl", "p99.9_e2el", "prefill_pp", "prefill_dcp_size", "decode_pcp_size", "measured_isl"} <= set(agg)
        # energy from the stand-in's counters over the point's window: 300 W on each worker's GPU 0
        assert agg["power_valid"] == raw["power_valid"] == 1 and agg["power_source"] == "energy_counter"
        window = raw["benchmark_end_time_unix"] - raw["benchmark_start_time_unix"]
        assert agg["total_gpu_energy_j"] == pytest.approx(600 * window, abs=0.6) and agg["avg_power_w"] == pytest.approx(300, rel=1e-3)
        assert agg["prefill_gpu_energy_j"] == pytest.approx(300 * window, abs=0.3)
        assert agg["joules_per_output_token"] == pytest.approx(agg["total_gpu_energy_j"] / raw["total_output_tokens"], rel=1e-3)
        # LOGS/ as srt-slurm lays it out, the raw file again
        assert json.loads((ws / "LOGS" / f"isl_128_osl_32/results_concurrency_{conc}_gpus_2_ctx_1_gen_1.json").read_text()) == raw
    assert (ws / "LOGS" / "summary.json").exists() and not (ws / "results.tar.gz").exists()
    with tarfile.open(ws / "multinode_server_logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"summary.json", "provenance.json", "logs/decode-0.n0.log", "ARCHIVE-MANIFEST.txt",
            "bench/isl128-osl32/c4/profile_export_aiperf.json", "bench/isl128-osl32/c4/profile_export.jsonl"} <= names
    summary = (first / "summary.md").read_text()
    assert "## inferx-slurm ci: local-mocker-1p1d (1P1D TP1): passed" in summary and "| 128 | 32 | 4 |" in summary
    assert "- Dynamo: `1.6.1`" in summary and "- partition: `local`" in summary
    o = outputs(first / "output.txt")
    assert o["exit_code"] == "0" and o["outcome"] == "passed" and float(o["best_tput_per_gpu"]) > 0
    assert o["results_dir"] == str(first / "run") and o["job_id"].isdigit()
    prov = json.loads((first / "run" / "provenance.json").read_text())
    assert prov["slurm"]["job_id"] == o["job_id"] and prov["slurm"]["nodes"] == ["node1", "node2"]
    assert prov["environment"]["dynamo"] == "1.6.1" and prov["recipe"]["git_revision"]
    shown = cli("results", str(first / "run"))
    assert "Dynamo: 1.6.1" in shown.stdout and f"provenance: job {o['job_id']}" in shown.stdout

    # The planted slowdown: the mock engine simulates 10x slower than the baseline's.
    second = tmp_path / "second"
    out = cli("ci", str(RECIPE), "--results-dir", str(second / "run"), "--set", "engine.args.speedup-ratio=1",
              "--baseline", str(first / "run"), env=actions_env(second), cwd=tmp_path)
    assert out.returncode == cr.EXIT_REGRESSION == 5, out.stdout + out.stderr
    assert "::error title=inferx-slurm regression (exit 5)::tput_per_gpu at ISL 128 OSL 32 conc 1" in out.stdout
    assert "::warning title=inferx-slurm::differs from the baseline: recipe sha256" in out.stdout
    summary = (second / "summary.md").read_text()
    assert "FAILED: regression (exit 5)" in summary and "| tput_per_gpu |" in summary and "**REGRESSION**" in summary
    assert outputs(second / "output.txt")["category"] == "regression"
    compare = cli("results", str(second / "run"), "--compare", str(first / "run"))
    assert "warning: runs differ in recipe sha256" in compare.stderr
    # Without RUNNER_TYPE, MODEL_PREFIX, PRECISION the labels come from the recipe, never null;
    # the local cluster has no GPU library for the sampler, which the power fields say.
    agg = json.loads(next((second / "ws").glob("agg_*conc4*.json")).read_text())
    assert (agg["hw"], agg["infmax_model_prefix"], agg["spec_decoding"]) == ("local", "tinymoe", "none")
    assert agg["power_valid"] == 0 and agg["power_invalid_reasons"] == ["gpu_telemetry_unavailable"]
    assert "Energy not valid (gpu_telemetry_unavailable)" in summary
    long = cli("results", str(second / "run"), "--long")
    assert "p99.9 TTFT" in long.stdout and "med E2EL" in long.stdout and "ISL meas" in long.stdout


@pytest.mark.cluster
def test_pinned_dynamo_version_fails_within_seconds_naming_both(cluster, tmp_path):
    out = cli("ci", str(RECIPE), "--results-dir", str(tmp_path / "run"), "--set", "expect.dynamo_version=9.9.9",
              "--set", "engine.startup_timeout_s=600", env={"GITHUB_STEP_SUMMARY": "", "GITHUB_OUTPUT": ""}, cwd=tmp_path)
    assert out.returncode == cr.EXIT_ENGINE == 4, out.stdout + out.stderr
    assert "FAILED: engine (exit 4)" in out.stdout  # outside Actions the report goes to stdout
    assert "is 1.6.1 in this worker's environment, but the recipe pins 9.9.9 (expect.dynamo_version)" in out.stdout
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    started = next(e["t"] for e in status["events"] if e["event"] == "engines started")
    # the identity check's seconds (a minute on a busy machine), not the 600 s start-up timeout
    assert status["fault_at"] - status["started"] - started < 60
    assert "Hint: the worker's environment is not what the recipe pins" in status["diagnosis"]
