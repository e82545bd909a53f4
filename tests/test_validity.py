"""Whether a finished point is a result: each rule of results/validity.py, the KV counters read
from real vLLM decode metrics, the engine's KV capacity beside the plan's, and how an invalid
point shows in the table, the CI step summary, its annotations and outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferx_slurm.benchmark.aiperf import aiperf_argv, asks_ignore_eos
from inferx_slurm.ci import report as cr
from inferx_slurm.engines import vllm
from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.sections import ValidityLimits
from inferx_slurm.results import kv_capacity
from inferx_slurm.results.table import compare, format_table, validity_lines
from inferx_slurm.results.validity import KVCounters, KVStatus, Reason, invalid_rows, judge
from inferx_slurm.runtime import kv_probe

from conftest import LOCAL_RECIPES, REPO

DATA = REPO / "tests" / "data"
HEALTHY = KVCounters(transfers=9, failed=0, bytes=9 * 786432, external_hits=2835, prompt_local=0, prompt_external=2835)


def row(**over):
    base = {"isl": 300, "osl": 16, "concurrency": 2, "completed": 8, "failed": 0, "total_output_tokens": 128,
            "output_lens": [16] * 8, "tput_per_gpu": 123.4, "output_tput_per_gpu": 50.0}
    return {**base, **over}


def verdict(r=None, *, kv=HEALTHY, disaggregated=True, kv_known=True, ignore_eos=True, limits=ValidityLimits()):
    return judge(r or row(), osl=16, ignore_eos=ignore_eos, disaggregated=disaggregated, kv_known=kv_known, kv=kv, limits=limits)


def test_a_healthy_disaggregated_point_is_valid_and_carries_its_transfers():
    v = verdict()
    assert v.valid and v.reasons == [] and v.kv_transfer is KVStatus.verified
    f = v.row_fields()
    assert f["valid"] is True and f["kv_transfer"] == "verified" and f["invalid_reasons"] == []
    assert (f["kv_transfers"], f["kv_transfer_failures"], f["kv_bytes_transferred"]) == (9, 0, 9 * 786432)
    assert (f["decode_prompt_tokens_local"], f["decode_prompt_tokens_external"], f["kv_external_prefix_hits"]) == (0, 2835, 2835)


@pytest.mark.parametrize("r, reason, words", [
    (row(total_output_tokens=0, output_lens=[0] * 8), Reason.no_output, "no output token came back"),
    (row(completed=7, failed=1, output_lens=[16] * 7), Reason.error_rate, "1 of 8 requests failed"),
    (row(output_lens=[16] * 7 + [3]), Reason.short_output, "1 of 8 outputs are shorter than OSL 16 (shortest 3)"),
])
def test_each_client_side_rule_makes_a_point_invalid(r, reason, words):
    v = verdict(r)
    assert not v.valid and v.reasons == [reason] and words in v.why[0], v.why
    assert v.row_fields()["invalid_reasons"] == [reason.value]


@pytest.mark.parametrize("kv, reasons, words", [
    (HEALTHY.model_copy(update={"failed": 2.0}), [Reason.transfer_failed], "2 KV transfers failed on decode"),
    (KVCounters(transfers=0, failed=0, bytes=0, external_hits=0, prompt_local=0, prompt_external=0), [Reason.no_transfer],
     "no KV block reached decode"),
    (HEALTHY.model_copy(update={"prompt_local": 2835.0, "prompt_external": 0.0}), [Reason.recomputed],
     "decode computed 2835 of 2835 prompt tokens itself"),
    # The connector left out on decode: no vllm:nixl_ series at all, every prompt token computed locally.
    (KVCounters(external_hits=0, prompt_local=1261, prompt_external=0), [Reason.recomputed, Reason.no_transfer], "1261 of 1261"),
])
def test_each_kv_rule_makes_a_disaggregated_point_invalid(kv, reasons, words):
    v = verdict(kv=kv)
    assert not v.valid and v.reasons == reasons and v.kv_transfer is KVStatus.failed and words in v.why[0], v.why


def test_limits_are_the_recipes_and_bound_inclusively():
    assert verdict(row(completed=99, failed=1, output_lens=[16] * 99)).valid  # 1 % is the default limit
    assert not verdict(row(completed=98, failed=2, output_lens=[16] * 98)).valid
    loose = ValidityLimits(max_error_rate=0.5, max_recomputed_share=0.2)
    assert verdict(row(completed=5, failed=3, output_lens=[16] * 5), limits=loose).valid
    # one prompt token of each request computed on decode: a share the default allows
    assert verdict(kv=HEALTHY.model_copy(update={"prompt_local": 9.0})).valid
    assert not verdict(kv=HEALTHY.model_copy(update={"prompt_local": 600.0})).valid
    assert verdict(kv=HEALTHY.model_copy(update={"prompt_local": 600.0}), limits=loose).valid


def test_short_outputs_count_only_when_the_client_asked_to_ignore_eos():
    assert verdict(row(output_lens=[16] * 7 + [3]), ignore_eos=False).valid
    argv = aiperf_argv(Recipe.load(LOCAL_RECIPES / "vllm-1p1d.yaml"), Recipe.load(LOCAL_RECIPES / "vllm-1p1d.yaml").benchmark.scenarios[0],
                       2, url="http://x", artifact_dir="/tmp", tokenizer="t")
    assert asks_ignore_eos(argv)
    assert not asks_ignore_eos(argv + ["--extra-inputs", "ignore_eos:false"]) and not asks_ignore_eos(["aiperf", "profile"])


def test_a_transfer_nobody_measured_is_never_a_pass():
    for v in (verdict(kv=None), verdict(kv_known=False), verdict(kv=KVCounters())):
        assert v.kv_transfer is KVStatus.not_measured and "kv_transfers" not in v.row_fields()
    agg = verdict(kv=None, disaggregated=False)
    assert agg.valid and agg.kv_transfer is KVStatus.not_applicable
    # not measured is said, not hidden: the line under the table names it
    lines = validity_lines({"rows": [{**row(), **verdict(kv=None).row_fields()}]})
    assert lines == ["ISL 300 OSL 16 conc 2: KV transfer not measured (the engine exposes no transfer counters)"]


def test_counters_over_a_point_are_the_difference_and_series_appear_late():
    before = KVCounters(transfers=None, failed=0, prompt_local=5, prompt_external=100)
    after = KVCounters(transfers=3, failed=0, prompt_local=5, prompt_external=1000)
    d = after.minus(before)
    assert (d.transfers, d.failed, d.prompt_local, d.prompt_external, d.bytes) == (3, 0, 0, 900, None)


def test_real_vllm_decode_metrics_read_as_a_verified_and_a_recomputing_decode():
    nixl = kv_probe.counters((DATA / "vllm_decode_metrics_nixl.txt").read_text(), vllm.KV_TRANSFER)
    assert nixl == KVCounters(transfers=10, failed=0, bytes=7864320, external_hits=3152, prompt_local=0, prompt_external=3152)
    assert verdict(kv=nixl).valid
    none = kv_probe.counters((DATA / "vllm_decode_metrics_no_connector.txt").read_text(), vllm.KV_TRANSFER)
    assert none.transfers is None and none.failed is None and none.prompt_local == 1261 and none.prompt_external == 0
    assert Reason.recomputed in verdict(kv=none).reasons
    # summed over decode workers; one that does not answer is left out, none answering is "not measured"
    texts = {"a": (DATA / "vllm_decode_metrics_nixl.txt").read_text(), "b": (DATA / "vllm_decode_metrics_no_connector.txt").read_text()}
    both = kv_probe.kv_counters(["a", "b", "gone"], vllm.KV_TRANSFER, scrape=texts.get)
    assert (both.transfers, both.prompt_local, both.prompt_external) == (10, 1261, 3152)
    assert kv_probe.kv_counters(["gone"], vllm.KV_TRANSFER, scrape=texts.get) is None
    assert kv_probe.kv_counters(["a"], None, scrape=texts.get) is None


def test_engine_kv_capacity_from_its_metrics_or_log_beside_the_plan(tmp_path: Path):
    text = (DATA / "vllm_decode_metrics_nixl.txt").read_text()
    assert kv_probe.capacity_from_metrics(text, vllm.KV_CAPACITY) == 524288
    older = text.replace('kv_cache_size_tokens="524288",', "")  # blocks x block size
    assert kv_probe.capacity_from_metrics(older, vllm.KV_CAPACITY) == 4096 * 128
    log = tmp_path / "decode-0.n0.log"
    log.write_text("(EngineCore pid=29249) INFO 12-02 01:25:17 [kv_cache_utils.py:2464] CPU KV cache size: 524,288 tokens, "
                   "Maximum concurrency for 1,024 tokens per request: 512.00x\n")
    by_log = kv_probe.worker_capacity("decode-0", "decode", None, log, vllm.KV_CAPACITY, 530115)
    assert (by_log.engine_tokens, by_log.source, by_log.difference_pct, by_log.warning) == (524288, "log", -1.1, None)
    far = kv_probe.worker_capacity("decode-0", "decode", "u", log, vllm.KV_CAPACITY, 1738611, scrape={"u": text}.get)
    assert far.source == "metrics" and far.difference_pct == -69.8
    assert far.warning.startswith("decode-0: the engine's KV cache holds 524,288 tokens, the memory plan predicted 1,738,611 (-69.8%")
    unplanned = kv_probe.worker_capacity("prefill-0", "prefill", None, tmp_path / "none.log", vllm.KV_CAPACITY, None)
    assert unplanned.engine_tokens is None and unplanned.warning is None
    assert kv_capacity.lines([unplanned.model_dump(), far.model_dump()]) == [
        "KV capacity prefill-0: engine not reported, plan not planned",
        "KV capacity decode-0: engine 524,288 tokens (metrics), plan 1,738,611 (-69.8%)"]
    # 20 % either way is within the planner's accuracy
    assert kv_capacity.compare("d", "decode", 120, "log", 100).warning is None
    assert kv_capacity.compare("d", "decode", 121, "log", 100).warning


def invalid_row():
    bad = verdict(kv=KVCounters(external_hits=0, prompt_local=1261, prompt_external=0))
    return {**row(), **bad.row_fields()}


def test_the_table_marks_an_invalid_point_and_shows_no_throughput_for_it():
    good = {**row(concurrency=4), **verdict().row_fields()}
    lines = format_table([invalid_row(), good]).splitlines()
    head, bad_line, good_line = (line.split() for line in lines)
    assert lines[0].split()[-1] == "valid" and bad_line[-1] == "INVALID" and good_line[-1] == "yes"
    assert "123.4" not in lines[1] and "123.4" in lines[2]
    assert bad_line[-3:-1] == ["8", "0"]  # requests done and failed still shown
    assert invalid_rows([invalid_row(), good]) == [invalid_row()]
    shown = validity_lines({"rows": [invalid_row(), good]})
    assert shown[0].startswith("ISL 300 OSL 16 conc 2: INVALID (decode computed 1261 of 1261 prompt tokens itself")
    assert shown[1] == ("ISL 300 OSL 16 conc 2: KV transfer failed: no transfer counters on decode; decode prompt tokens 0 "
                        "received, 1,261 computed locally")
    assert "ISL 300 OSL 16 conc 4: KV transfer verified: 9 transfers, 0 failed, 7,077,888 bytes" in shown[2]
    # a comparison has no number for an invalid point
    assert compare({"rows": [row()]}, {"rows": [invalid_row()]}).splitlines()[1].split()[3:] == ["invalid"] * 5


def test_ci_step_summary_annotations_and_outputs_of_an_invalid_run():
    rows = [invalid_row(), {**row(concurrency=4, tput_per_gpu=10.0), **verdict().row_fields()}]
    rep = cr.CIReport(name="x", exit_code=cr.EXIT_INVALID, category="invalid", warnings=[], rows=rows,
                      diagnosis="\n".join(cr.invalid_points(rows)),
                      kv_capacity=[kv_capacity.compare("decode-0", "decode", 524288, "metrics", 1738611).model_dump()])
    assert cr.EXIT_INVALID == 7 and cr.CATEGORY_EXIT[cr.Category.invalid] == 7 and len(set(cr.CATEGORY_EXIT.values())) == len(cr.CATEGORY_EXIT)
    md = cr.markdown(rep)
    assert "FAILED: invalid (exit 7)" in md and "| 300 | 16 | 2 |" + " - |" * 9 + " 8 | 0 | **INVALID** | failed |" in md
    assert "| 300 | 16 | 4 | 10.0 |" in md and "| yes | verified: 9 ok, 0 failed |" in md
    assert "| decode-0 | 524,288 | metrics | 1,738,611 | -69.8% |" in md
    (err,) = [c for c in cr.workflow_commands(rep) if c.startswith("::error")]
    assert err.startswith("::error title=inferx-slurm invalid (exit 7)::ISL 300 OSL 16 conc 2: INVALID (decode computed")
    # the best throughput a workflow reads is a valid point's only
    assert cr.outputs(rep)["best_tput_per_gpu"] == "10.000"


def test_validity_limits_are_checked_naming_the_field():
    r = Recipe.load(LOCAL_RECIPES / "vllm-1p1d.yaml")
    assert r.benchmark.validity == ValidityLimits(max_error_rate=0.01, max_recomputed_share=0.01)
    assert r.with_overrides({"benchmark.validity.max_error_rate": 0.1}).benchmark.validity.max_error_rate == 0.1
    with pytest.raises(RecipeError) as e:
        r.with_overrides({"benchmark.validity.max_error_rate": 2})
    assert "benchmark.validity.max_error_rate" in str(e.value)


def test_the_point_probe_judges_what_moved_between_its_two_scrapes():
    texts = iter(["vllm:prompt_tokens_total 0.0\n", (DATA / "vllm_decode_metrics_nixl.txt").read_text()])
    disagg = Recipe.load(LOCAL_RECIPES / "vllm-1p1d.yaml")
    probe = kv_probe.PointProbe(disagg, lambda: ["decode-0"], scrape=lambda url: next(texts))
    probe.start()
    v = probe.judge(row(), osl=16, ignore_eos=True)
    assert v.valid and v.kv.transfers == 10 and v.kv.prompt_external == 3152
    # a decode that did not answer before the point: nothing to subtract from, so not measured
    gone = kv_probe.PointProbe(disagg, lambda: ["decode-0"], scrape=lambda url: None)
    gone.start()
    assert gone.judge(row(), osl=16, ignore_eos=True).kv_transfer is KVStatus.not_measured
