"""The results dir contract: its file names, the status and summary the driver writes and
everyone reads, the run phases and fault kinds, the CI report, and reporting without printing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from inferx_slurm.ci import report as cr
from inferx_slurm.ci.report import Category, CIReport
from inferx_slurm.job.paths import JobPaths, SweepPaths, unused_dir, unused_file
from inferx_slurm.job.phases import ENDS_ALLOCATION, EventKind, FaultKind, Phase
from inferx_slurm.job.status import Event, Status, Summary
from inferx_slurm.reporting import Callbacks, Collector, Silent
from inferx_slurm.runtime.record import RunRecord, process_started

# status.json and summary.json as drivers before the typed models wrote them.
OLD_STATUS = {
    "phase": "failed", "job_id": "17", "hosts": ["node1", "node2"], "started": 1000.0, "updated": 1012.5,
    "events": [{"t": 0.02, "event": "nodes", "hosts": ["node1", "node2"]}, {"t": 1.07, "event": "ready", "seconds": 1.04,
                                                                             "registered": {"prefill": 1, "decode": 1}},
               {"t": 12.4, "event": "failed", "kind": "stalled"}],
    "fault": "stalled", "diagnosis": "benchmark made no progress for 5 s.", "fault_at": 1012.4,
}
OLD_SUMMARY = {"name": "n", "topology": "1P1D TP1", "partial": True, "total_gpus": 2,
               "rows": [{"isl": 128, "osl": 32, "concurrency": 4, "completed": 20, "failed": 0}],
               "served": {"per_worker": {"prefill-0": 20, "decode-0": 20}, "through_prefill_and_decode": 20}}


def test_job_dir_names_are_the_contract():
    p = JobPaths("/r/run")
    assert (p.status, p.summary, p.recipe_json, p.plan, p.rendered) == tuple(
        Path("/r/run") / n for n in ("status.json", "summary.json", "recipe.json", "plan.json", "rendered.json"))
    assert (p.diagnosis.name, p.job.name, p.image.name, p.provenance.name, p.ci_report.name) == (
        "diagnosis.txt", "job.json", "image.json", "provenance.json", "ci-report.json")
    assert p.log("decode-0.n0") == Path("/r/run/logs/decode-0.n0.log") and p.nodes_env == Path("/r/run/nodes.env")
    assert p.point("isl128-osl32", 4) == Path("/r/run/bench/isl128-osl32/c4") == p.file(JobPaths.point_rel("isl128-osl32", 4))
    assert JobPaths.script_rel("frontend.sh") == "scripts/frontend.sh" and p.worker_report("decode-0") == Path("/r/run/provenance/decode-0")
    assert SweepPaths("/r").manifest == Path("/r/sweep.json") and SweepPaths("/r").job("x") == JobPaths("/r/x")


def test_results_are_never_overwritten(tmp_path):
    taken = tmp_path / "run"
    (taken / "logs").mkdir(parents=True)
    assert unused_dir(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()  # nothing created
    assert unused_dir(taken) == tmp_path / "run.2"
    assert unused_dir(taken, taken={tmp_path / "run.2"}) == tmp_path / "run.3"
    (tmp_path / "pack-0.json").write_text("{}")
    assert unused_file(tmp_path / "pack-0.json") == tmp_path / "pack-0.2.json"


def test_status_written_before_the_models_reads_and_writes_back_the_same(tmp_path):
    path = tmp_path / "status.json"
    path.write_text(json.dumps(OLD_STATUS))
    st = Status.read(path)
    assert st.phase is Phase.failed and st.phase.ended and st.fault is FaultKind.stalled and st.fault not in ENDS_ALLOCATION
    assert st.event("ready").seconds == 1.04 and st.events[0].hosts == ["node1", "node2"]
    st.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == OLD_STATUS  # same keys, same values
    assert Status.read(tmp_path / "missing.json").as_json() == {"phase": "pending"}


def test_summary_round_trip(tmp_path):
    path = tmp_path / "summary.json"
    Summary.model_validate(OLD_SUMMARY).write(path)
    assert json.loads(path.read_text()) == OLD_SUMMARY
    assert Summary.read(path).rows[0]["completed"] == 20


def test_phases_and_fault_kinds_are_strings_in_the_json():
    assert [p.value for p in Phase] == ["pending", "starting", "ready", "benchmarking", "evaluating", "done", "failed"]
    assert Phase("done") == "done" and not Phase.ready.ended
    assert {k.value for k in FaultKind} == {"exited", "not_ready", "node_down", "stalled", "cancelled", "infra", "install",
                                            "node_cache", "time_limit", "client", "fabric", "engine_fatal", "eval",
                                            "internal", "not_run"}
    assert ENDS_ALLOCATION == {FaultKind.cancelled, FaultKind.time_limit, FaultKind.node_down}
    # CI gives every fault kind a category, and each category its exit code.
    for kind in FaultKind:
        assert cr.classify_fault(kind, "prefill worker 0 exited") in cr.CATEGORY_EXIT
    assert cr.classify_fault(FaultKind.exited, "infra exited (exit code 1) on host node1.") is Category.infrastructure
    assert cr.classify_fault(FaultKind.internal, "") is Category.internal and cr.classify_fault("something new", "") is Category.internal


def test_timeline_has_absolute_times_from_before_the_driver_started(tmp_path):
    t0 = time.time()
    rec = RunRecord(JobPaths(tmp_path), t0)
    rec.before_start()
    rec.event(EventKind.ready, quiet=True, seconds=1.5)
    rec.status(Phase.ready, registered={"decode": 1})
    st = Status.read(JobPaths(tmp_path).status)
    kinds = [e.event for e in st.events]
    assert kinds == ["allocation", "interpreter", "ready"]  # the test's parent process, then its own
    assert all(e.at is not None and abs(e.t - (e.at - t0)) < 0.002 for e in st.events)
    # `at` is kept to the millisecond
    assert st.events[0].at <= st.events[1].at <= t0 + 0.001 and t0 - 0.001 <= st.events[2].at and st.registered == {"decode": 1}
    assert st.started == t0 and isinstance(st.events[0], Event)
    assert abs(process_started(os.getpid()) - st.events[1].at) < 0.05


def test_ci_report_writes_only_what_the_run_reached():
    rep = CIReport.start("x")
    assert rep.as_json() == {"name": "x", "exit_code": 0, "category": None, "warnings": []}
    rep.topology = "1P1D TP1"
    rep.warnings.append("1 of 20 requests failed")
    rep.failed(Category.engine, "decode worker 0 exited")
    doc = rep.as_json()
    assert doc == {"name": "x", "exit_code": 4, "category": "engine", "warnings": ["1 of 20 requests failed"],
                   "topology": "1P1D TP1", "diagnosis": "decode worker 0 exited"}
    again = CIReport.model_validate(json.loads(json.dumps(doc)))
    assert again.category is Category.engine and again.as_json() == doc
    assert cr.outputs(again)["category"] == "engine" and "FAILED: engine (exit 4)" in cr.markdown(again)
    assert cr.workflow_commands(again)[-1] == "::error title=inferx-slurm engine (exit 4)::decode worker 0 exited"


def test_reporters_collect_or_drop_and_never_print(capsys):
    c = Collector()
    c.info("staging")
    c.warning("warning: x")
    assert (c.infos, c.warnings) == (["staging"], ["warning: x"])
    Silent().warning("dropped")
    lines: list[str] = []
    Callbacks(on_info=lines.append, on_warning=lambda m: lines.append(f"W {m}")).warning("w")
    assert lines == ["W w"] and capsys.readouterr() == ("", "")


def test_lock_waits_are_reported_to_the_caller(tmp_path, capsys):
    from inferx_slurm.sharedfs.locks import Holder, wait_notice

    said = Collector()
    wait_notice("another import", said.info)(Holder(host="n1", pid=42))
    wait_notice("another import", said.info)(None)
    assert said.infos == ["waiting for pid 42 on n1 to finish", "waiting for another import to finish"]
    assert capsys.readouterr() == ("", "")


def test_staging_progress_goes_to_the_reporter(tmp_path, capsys):
    from inferx_slurm.job.deployment import build_deployment
    from inferx_slurm.job.submit import stage
    from inferx_slurm.recipe.schema import Recipe

    src = tmp_path / "ckpt" / "m"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"\0" * 4096)
    r = Recipe.from_dict({"name": "s", "profile": "local", "topology": "1P1D TP1", "engine": {"backend": "mocker"},
                          "model": {"path": str(src), "stage_dir": str(tmp_path / "staged")}})
    dep = build_deployment(r, tmp_path / "run")
    said = Collector()
    stage(dep, said)
    assert said.infos and (tmp_path / "staged" / "m" / "weights.bin").exists()
    assert capsys.readouterr() == ("", "")


def test_dry_run_refusal_is_a_reported_warning(tmp_path, capsys):
    from inferx_slurm.job.dry_run import dry_run_text
    from inferx_slurm.recipe.schema import Recipe

    r = Recipe.from_dict({"name": "d", "profile": "h100", "topology": "1P1D TP1", "model": {"path": "org/m"},
                          "slurm": {"python": str(tmp_path / "no-python")}})
    said = Collector()
    text = dry_run_text(r, tmp_path / "out", reporter=said)
    assert "REFUSED at launch" in text and said.warnings and said.warnings[0].startswith("warning: launch would refuse")
    assert capsys.readouterr().err == ""
