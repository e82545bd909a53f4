"""The real engine in the loop on the local Slurm cluster: vLLM (its CPU build, 0.31.0) serving a
tiny Llama with real weights, as Dynamo prefill and decode workers whose KV cache crosses over
NIXL, and on its own as vLLM's OpenAI server. Readiness, the stall watch, the benchmark, the
results and the fault path all meet what a real engine prints, serves and does when it dies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferx_slurm import RunError, submit
from inferx_slurm.errors import RecipeError
from inferx_slurm.job.deployment import build_deployment
from inferx_slurm.job.submit import check_deployment
from inferx_slurm.planning.fabric import TRANSFER_BYTES, SideRecord
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.runtime.ports import read_ports

from conftest import REPO
from test_evals import write_gsm8k

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

VLLM_PY = Path(os.environ.get("INFERX_VLLM_PYTHON", "/opt/vllm-venv/bin/python"))
DISAGG = REPO / "recipes" / "disagg" / "local" / "vllm-1p1d.yaml"
AGG = REPO / "recipes" / "agg" / "local" / "vllm-1a.yaml"
# vLLM's NIXL connector reports on the reading side (decode), every few seconds while busy.
TRANSFERS = re.compile(r"KV Transfer metrics: Num successful transfers=(\d+),.*Num failed transfers=(\d+)")
# Two engines loading on two shared cores: one to two minutes each, more on a busy machine.
RUN_TIMEOUT_S = 900
# One KV block of the tiny Llama: 128 tokens x 2 layers x K,V x 2 KV heads x 64 x 4 bytes.
KV_BLOCK_BYTES = 128 * 2 * 2 * 2 * 64 * 4
# On CPU the KV cache is VLLM_CPU_KVCACHE_SPACE (1 GiB = 524,288 tokens of this model), not a
# share of GPU memory. A 1.25 GB "GPU" at vLLM's default 0.9 leaves the memory planner about
# the same 1 GiB once weights and activations are counted, so plan and engine can be compared.
PLANNED_GPU_GB = 1.25

if not VLLM_PY.exists():
    pytestmark.append(pytest.mark.skip(reason=f"no engine environment at {VLLM_PY}: bash setup_scripts/install_engines.sh"))


def launch_wait(recipe: Path, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(recipe), "--wait", "--results-dir", str(results)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO)


def failed_transfers(results: Path) -> bool:
    """Whether the run's point was invalid because its KV transfers failed (decode's own counters)."""
    rows = json.loads((results / "summary.json").read_text())["rows"]
    return any(r.get("valid") is False and (r.get("kv_transfer_failures") or 0) > 0 for r in rows)


def transfers(log: Path) -> tuple[int, int]:
    """(successful, failed) KV transfers the decode worker logged over the run."""
    ok = failed = 0
    for m in TRANSFERS.finditer(log.read_text(errors="replace")):
        ok, failed = ok + int(m.group(1)), failed + int(m.group(2))
    return ok, failed


def variant(tmp_path: Path, sets: dict) -> Path:
    """The 1P1D recipe with `sets` applied, as a recipe file."""
    path = tmp_path / "recipe.yaml"
    path.write_text(Recipe.load(DISAGG).with_overrides(sets).to_yaml())
    return path


def eval_section(tmp_path: Path) -> dict:
    """A small GSM8K eval (6 problems, 32 tokens each) the tiny model cannot pass: threshold 0."""
    return {"tasks": [{"name": "gsm8k", "dataset": str(write_gsm8k(tmp_path / "gsm8k")), "num_fewshot": 1, "threshold": 0.0}],
            "limit": 6, "max_tokens": 32, "stage_dir": str(tmp_path / "staged")}


def check_eval_after_the_point(d: Path, url_port: int) -> dict:
    """The eval ran after the benchmark point, on the engines the point used (one start), against
    the deployment's OpenAI endpoint, and its answers came from the engine."""
    summary = json.loads((d / "summary.json").read_text())
    ev = summary["eval"]
    (t,) = ev["tasks"]
    assert t["task"] == "gsm8k" and t["n"] == 6 and t["threshold"] == 0.0 and t["passed"] is True and 0 <= t["score"] <= 1
    assert ev["concurrency"] == 2 and ev["url"].endswith(f":{url_port}"), ev  # the highest benchmark concurrency
    status = json.loads((d / "status.json").read_text())
    names = [e["event"] for e in status["events"]]
    assert names.count("engines started") == 1 and names.index("eval") > names.index("benchmark"), names
    samples = [json.loads(x) for f in (d / "eval").glob("samples_gsm8k_*.jsonl") for x in f.read_text().splitlines()]
    assert len(samples) == 6 and all(isinstance(s["resps"][0], str) for s in samples)
    return ev


def test_disaggregated_1p1d_moves_kv_from_prefill_to_decode(cluster, tmp_path):
    recipe = variant(tmp_path, {"slurm.gpu_memory_gb": PLANNED_GPU_GB, "eval": eval_section(tmp_path)})
    d = tmp_path / "run"
    out = launch_wait(recipe, d)
    if out.returncode == 7 and failed_transfers(d):
        # On two busy cores vLLM's NIXL handshake can time out (handshake_setup_failed) and
        # prefill's KV lease can expire before decode reads it. The launcher caught it and
        # marked the point invalid (exit 7), which is its job; this test is about the healthy
        # path, so that is tried once more, in a fresh results dir.
        d = tmp_path / "run-again"
        out = launch_wait(recipe, d)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads((d / "summary.json").read_text())
    (row,) = summary["rows"]
    assert summary["partial"] is False
    assert row["completed"] == 8 and row["failed"] == 0
    assert row["output_throughput"] > 0 and row["num_prefill_gpu"] == 1 and row["num_decode_gpu"] == 1
    # The point's proof, from the decode engine's own counters over the point (warm-up
    # included): every request's prompt KV arrived over NIXL, in whole blocks, none failed,
    # and decode computed no prompt token itself.
    assert row["valid"] is True and row["kv_transfer"] == "verified", row
    assert row["kv_transfers"] >= row["completed"] and row["kv_transfer_failures"] == 0, row
    assert row["kv_bytes_transferred"] > 0 and row["kv_bytes_transferred"] % KV_BLOCK_BYTES == 0, row
    assert row["decode_prompt_tokens_local"] == 0 and row["decode_prompt_tokens_external"] >= 300 * row["completed"], row
    assert row["kv_external_prefix_hits"] == row["decode_prompt_tokens_external"], row
    # Each worker's KV cache as vLLM sized it, from its metrics, beside the memory plan's.
    caps = {c["worker"]: c for c in summary["kv_capacity"]}
    assert set(caps) == {"prefill-0", "decode-0"}
    for c in caps.values():
        assert c["engine_tokens"] == 524288 and c["source"] == "metrics", c
        assert c["planned_tokens"] and abs(c["difference_pct"]) < 20, c
    assert "kv capacity warning" not in [e["event"] for e in json.loads((d / "status.json").read_text())["events"]]
    shown = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(d)], capture_output=True, text=True, cwd=REPO)
    assert "KV transfer verified" in shown.stdout and "KV capacity decode-0: engine 524,288 tokens (metrics)" in shown.stdout
    # Every request went through both workers (their own logs say so): the point's 8 and its
    # warm-up, then the eval's 6 through the same frontend. On two busy cores the frontend can
    # give up on a worker's request plane (HTTP 504 after Dynamo's TCP request timeout) and the
    # eval asks again, so an eval problem may have reached the workers twice.
    served = summary["served"]
    n = served["through_prefill_and_decode"]
    assert n >= 15 and served["per_worker"] == {"prefill-0": n, "decode-0": n}, served
    check_eval_after_the_point(d, read_ports(d / "ports" / "frontend.env")["INFERX_HTTP_PORT"])
    assert "gsm8k" in subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(d)], capture_output=True, text=True,
                                     cwd=REPO).stdout
    # The decode worker read the prompts' KV blocks from prefill over NIXL, and none failed. It
    # logs its counts every few seconds while busy; the last interval can end with the job.
    ok, failed = transfers(d / "logs" / "decode-0.n0.log")
    assert failed == 0 and ok >= 1, (ok, failed)
    # What a real engine says at start: its KV cache as it sized it (1 GiB: 524,288 tokens of this model).
    assert "CPU KV cache size: 524,288 tokens" in (d / "logs" / "decode-0.n0.log").read_text()
    status = json.loads((d / "status.json").read_text())
    ready = next(e for e in status["events"] if e["event"] == "ready")
    assert ready["registered"]["prefill"] == 1 and ready["registered"]["decode"] == 1, ready
    # Before any engine started, the fabric preflight moved bytes from the prefill node to the
    # decode node over NIXL with the workers' UCX_TLS, both ways, and the target saw them intact.
    names = [e["event"] for e in status["events"]]
    assert names.index("fabric ok") < names.index("engines started"), names
    fab = next(e for e in status["events"] if e["event"] == "fabric ok")
    assert [(p["pair"], p["transport"], p["ok"], p["bytes"]) for p in fab["pairs"]] == [("0->1", "tcp", True, 2 * TRANSFER_BYTES)], fab
    init = SideRecord.model_validate_json((d / "fabric" / "initiator.node0.json").read_text())
    target = SideRecord.model_validate_json((d / "fabric" / "target.node1.json").read_text())
    assert init.ok and target.ok and target.seen == [0] and init.pairs[0].seconds > 0


def test_an_impossible_ucx_transport_fails_in_the_fabric_preflight_before_weights_load(cluster, tmp_path):
    """UCX_TLS naming a transport these nodes do not have: the engines would die only once their
    weights are loaded (minutes); the preflight fails the run in seconds, naming the value."""
    r = Recipe.load(DISAGG)
    r = r.with_overrides({"name": "local-vllm-1p1d-baducx", "engine.env": {**r.engine.env, "UCX_TLS": "rc_mlx5"}})
    h = submit(r, tmp_path / "run")
    with pytest.raises(RunError):
        h.wait(timeout=300, poll_s=0.5)
    d = h.results_dir
    st = json.loads((d / "status.json").read_text())
    assert st["fault"] == "fabric", st
    diag = st["diagnosis"]
    assert "NIXL fabric preflight failed before any weights loaded" in diag
    assert "prefill node 0" in diag and "decode node 1" in diag and "UCX_TLS=rc_mlx5" in diag
    assert "transport 'rc_mlx5' is not available" in diag  # UCX's own words
    # No engine ever started: no worker step ran, so no worker log exists.
    names = [e["event"] for e in st["events"]]
    assert "engines started" not in names and not list((d / "logs").glob("prefill-0*")), names
    assert h.results()["partial"] is True and h.results()["rows"] == []
    started = next(e["t"] for e in st["events"] if e["event"] == "nodes")
    failed = next(e["t"] for e in st["events"] if e["event"] == "failed")
    print(f"fabric preflight failure {failed - started:.1f} s after the nodes were known")
    assert failed - started < 60, (started, failed)


def test_a_side_channel_port_taken_after_the_check_fails_the_run_before_any_point(cluster, tmp_path):
    """Another process takes the prefill worker's NIXL side-channel port after its step checked
    the port block and before vLLM binds it (once its weights are loaded). vLLM's listener thread
    dies and the engine waits for it forever: alive, never registered. The run fails when that
    line is written, not at the start-up time-out, and publishes no point."""
    import socket

    r = Recipe.load(DISAGG).with_overrides({"name": "local-vllm-1p1d-sidechannel"})
    h = submit(r, tmp_path / "run")
    ports = h.results_dir / "ports" / "prefill-0.n0.env"
    squatter, end = None, time.time() + RUN_TIMEOUT_S
    try:
        while squatter is None and time.time() < end:
            port = read_ports(ports).get("INFERX_KV_SIDE_CHANNEL_PORT")
            if port:
                squatter = socket.socket()
                squatter.bind(("0.0.0.0", port))
                squatter.listen(1)
            time.sleep(0.05)
        with pytest.raises(RunError):
            h.wait(timeout=RUN_TIMEOUT_S, poll_s=0.5)
    finally:
        if squatter:
            squatter.close()
        _kill_leftovers(h.results_dir)
    st = json.loads((h.results_dir / "status.json").read_text())
    assert st["fault"] == "engine_fatal", st
    assert "prefill worker 0" in st["diagnosis"] and "side-channel listener died" in st["diagnosis"], st["diagnosis"]
    assert "Address already in use" in st["diagnosis"], st["diagnosis"]
    assert h.results()["rows"] == [] and h.results()["partial"] is True
    started = next(e["t"] for e in st["events"] if e["event"] == "engines started")
    failed = next(e["t"] for e in st["events"] if e["event"] == "failed")
    print(f"side-channel collision: failed {failed - started:.1f} s after the engines started")
    # Well before the start-up time-out the run would otherwise wait out.
    assert failed - started < r.engine.startup_timeout_s - 60, (started, failed)


def test_decode_without_kv_connector_is_invalid_not_a_result(cluster, tmp_path):
    """The silent failure: decode started without --kv-transfer-config serves every request,
    recomputing each prompt. A recipe that leaves it out is refused before submit (prefill and
    decode connector settings differ); here the connector goes missing where no recipe check
    can see it, between the rendered command and the engine, as a site's wrapper or an image's
    entry point could drop it. Through `ci`, as a workflow runs it: the point is INVALID, the
    run exits 7 with an error annotation, and no result file carries its throughput."""
    from test_ci import actions_env, outputs

    dropped = Recipe.load(DISAGG).with_overrides({"engine.decode.args.kv-transfer-config": None})
    with pytest.raises(RecipeError, match="both ends of the transfer need the same connector settings"):
        check_deployment(build_deployment(dropped, tmp_path / "refused"))
    wrapper = tmp_path / "python-without-decode-connector"
    wrapper.write_text(f"""#!/bin/bash
# The engine's interpreter, with --kv-transfer-config dropped from a decode worker's command line.
decode=0; for a in "$@"; do [ "$a" = decode ] && decode=1; done
args=(); skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  if [ $decode = 1 ] && [ "$a" = --kv-transfer-config ]; then skip=1; continue; fi
  args+=("$a")
done
exec {VLLM_PY} "${{args[@]}}"
""")
    wrapper.chmod(0o755)
    # A plan for a 4 GB GPU: 1.7M tokens predicted against the engine's 524,288.
    recipe = variant(tmp_path, {"engine.python": str(wrapper), "slurm.gpu_memory_gb": 4})
    env = actions_env(tmp_path)
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "ci", str(recipe), "--results-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path, env={**os.environ, **env})
    assert out.returncode == 7, out.stdout[-4000:] + out.stderr[-4000:]
    d = tmp_path / "run"
    assert "--kv-transfer-config" in (d / "scripts" / "decode-0.sh").read_text()
    # The engine says it got none: one warning per request it then recomputed.
    assert "Got kv_transfer_params, but no KVConnector found" in (d / "logs" / "decode-0.n0.log").read_text(errors="replace")
    summary = json.loads((d / "summary.json").read_text())
    (row,) = summary["rows"]
    # Every request succeeded: nothing but the engine's counters tells this run from a good one.
    assert row["completed"] == 8 and row["failed"] == 0 and summary["partial"] is False
    assert row["valid"] is False and "decode recomputed the prompts" in row["invalid_reasons"], row
    assert row["kv_transfer"] == "failed" and not row["kv_transfers"] and not row["decode_prompt_tokens_external"], row
    assert row["decode_prompt_tokens_local"] >= 300 * row["completed"], row
    assert summary["invalid_points"] == 1
    assert json.loads((d / "status.json").read_text())["invalid_points"] == [
        f"ISL 300 OSL 16 conc 2: INVALID ({'; '.join(row['invalid_why'])})"]
    assert "::error title=inferx-slurm invalid (exit 7)::ISL 300 OSL 16 conc 2: INVALID (decode computed" in out.stdout
    step = (tmp_path / "summary.md").read_text()
    assert "FAILED: invalid (exit 7)" in step and "| 300 | 16 | 2 |" + " - |" * 9 in step and "**INVALID**" in step
    o = outputs(tmp_path / "output.txt")
    assert o["exit_code"] == "7" and o["category"] == "invalid" and o["best_tput_per_gpu"] == ""
    assert not list((tmp_path / "ws").glob("*_isl_300_osl_16_conc2*.json")) and not list(tmp_path.glob("*conc2*.json"))
    # The engine's KV capacity against a plan for a 4 GB GPU: far apart, and said so.
    caps = {c["worker"]: c for c in summary["kv_capacity"]}
    assert caps["decode-0"]["engine_tokens"] == 524288 and caps["decode-0"]["difference_pct"] < -20
    assert "::warning title=inferx-slurm::decode-0: the engine's KV cache holds 524,288 tokens" in out.stdout
    shown = subprocess.run([sys.executable, "-m", "inferx_slurm", "results", str(d)], capture_output=True, text=True, cwd=REPO)
    table = shown.stdout.splitlines()[1:3]
    # ISL, OSL, conc, P gpu, D gpu shown; no throughput or latency; done 8, failed 0
    assert table[0].split()[-1] == "valid" and table[1].split() == ["300", "16", "2", "1", "1"] + ["-"] * 8 + ["8", "0", "INVALID"], table


def test_engine_own_server_with_ngram_speculation(cluster, tmp_path):
    """`frontend.server: engine` on the real engine: vLLM's own OpenAI server on the port its node
    took, no frontend or discovery step, n-gram speculative decoding switched on."""
    recipe = tmp_path / "agg.yaml"
    recipe.write_text(Recipe.load(AGG).with_overrides({"eval": eval_section(tmp_path)}).to_yaml())
    out = launch_wait(recipe, tmp_path / "run")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    d = tmp_path / "run"
    script = (d / "scripts" / "agg-0.sh").read_text()
    assert "-m vllm.entrypoints.openai.api_server --model" in script and '--port "${INFERX_HTTP_PORT}"' in script
    assert not (d / "scripts" / "frontend.sh").exists()
    log = (d / "logs" / "agg-0.n0.log").read_text(errors="replace")
    port = read_ports(d / "ports" / "agg-0.n0.env")["INFERX_HTTP_PORT"]
    assert f":{port}" in log  # vLLM's server says where it listens: the port its node took
    ready = next(e for e in json.loads((d / "status.json").read_text())["events"] if e["event"] == "ready")
    assert ready["registered"] == {}  # the engine's server lists the model: no Dynamo registry to count
    # vLLM took the speculative config: it sets up the n-gram proposer before serving.
    assert "ngram" in log.lower() and "speculative" in log.lower()
    (row,) = json.loads((d / "summary.json").read_text())["rows"]
    assert row["completed"] == 8 and row["failed"] == 0 and row["num_agg_gpu"] == 1
    # Random prompts give the proposer nothing to look up, so no draft was made: no acceptance
    # length is claimed for this point.
    assert row["acceptance_length"] is None
    # The eval after the point, on the engine's own server: one engine start, the dataset read
    # from its staged copy.
    check_eval_after_the_point(d, port)
    assert (tmp_path / "staged" / "gsm8k" / "test.jsonl").is_file()


def _kill_leftovers(run_dir: Path) -> list[int]:
    """SIGKILL every process still running with this run's dir in its environment (the worker
    scripts export cache dirs under it, and children inherit them); returns their pids."""
    killed = []
    needle = str(run_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            # Field 5 of stat is the process group; the command name before it may hold spaces.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(proc.name))
    return out


def test_decode_engine_killed_mid_benchmark(cluster, tmp_path):
    try:
        _decode_engine_killed_mid_benchmark(tmp_path)
    finally:
        _kill_leftovers(tmp_path / "run")


def _decode_engine_killed_mid_benchmark(tmp_path):
    r = Recipe.load(DISAGG).with_overrides({
        "name": "local-vllm-1p1d-kill", "benchmark.min_requests": 400, "benchmark.scenarios": [{"isl": 300, "osl": 64}],
    })
    h = submit(r, tmp_path / "run")
    end = time.time() + RUN_TIMEOUT_S
    while time.time() < end:
        st = json.loads((h.results_dir / "status.json").read_text()) if (h.results_dir / "status.json").exists() else {}
        assert st.get("phase") != "failed", st.get("diagnosis")
        # Past the warm-up: requests are flowing through decode.
        if st.get("phase") == "benchmarking" and transfers(h.results_dir / "logs" / "decode-0.n0.log")[0] > 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the benchmark never started moving KV blocks")
    pid = int((h.results_dir / "logs" / "decode-0.n0.pid").read_text())
    left = _group(pid)
    assert len(left) > 1, left  # the engine's main process and the engine core it started
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RunError):
        h.wait(timeout=300, poll_s=0.5)
    st = json.loads((h.results_dir / "status.json").read_text())
    assert st["fault"] == "exited", st
    assert "decode worker 0" in st["diagnosis"] and "SIGKILL" in st["diagnosis"], st["diagnosis"]
    # Seen at the engine's exit, not at a time-out (the stall watch's 120 s, start-up's 420 s):
    # 0.8-1.7 s on a quiet machine. Slurm ends a step only once its output pipe closes, and waits
    # 60 s for that ("Abandoning IO 60 secs after job shutdown initiated"): 67 s was seen once
    # while other engines loaded the two cores.
    assert st["fault_at"] - t < 100, st["fault_at"] - t
    assert h.results()["partial"] is True
    # What the killed process had started went with it: nothing of its group outlives the step.
    assert _group(pid) == []
