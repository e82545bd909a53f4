"""Accuracy evals: GSM8K scoring, the recipe's eval: section and its errors, the runner against
an OpenAI-compatible server that knows the answers (a score that passes), the summary's eval
block, the tables, `compare`, and what `ci` makes of a task below its threshold."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import pytest

from inferx_slurm.ci import report as cr
from inferx_slurm.ci.env import from_environ
from inferx_slurm.errors import RecipeError
from inferx_slurm.evals import gsm8k
from inferx_slurm.evals.results import compare, format_table, lm_eval_doc, task_result
from inferx_slurm.evals.runner import EvalFailed, check_data, load_task, run_task
from inferx_slurm.recipe.evals import EvalSpec, require_eval_section
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.runtime.evals import run_evals

sys.path.insert(0, str(Path(__file__).parent / "standins"))
from gsm8k_oracle import serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"),
    ("A box holds 12 pens. How many pens are in 5 boxes?", "5 boxes hold 5 * 12 = <<5*12=60>>60 pens.\n#### 60"),
    ("Sara read 20 pages on Monday and twice as many on Tuesday. How many pages did she read in total?",
     "On Tuesday she read 2 * 20 = <<2*20=40>>40 pages.\nIn total 20 + 40 = <<20+40=60>>60 pages.\n#### 60"),
    ("A shirt costs $15 and is sold $4 cheaper. What is the new price in dollars?", "The new price is 15 - 4 = <<15-4=11>>11 dollars.\n#### 11"),
    ("There are 1,200 books split evenly over 4 shelves. How many books per shelf?", "Each shelf holds 1200 / 4 = <<1200/4=300>>300 books.\n#### 300"),
    ("Mia has 9 candies and eats 2. How many are left?", "9 - 2 = <<9-2=7>>7 candies are left.\n#### 7"),
]
TRAIN = [("Ann has 2 cats and 3 dogs. How many pets does she have?", "2 + 3 = <<2+3=5>>5 pets.\n#### 5"),
         ("A car drives 30 miles an hour for 2 hours. How far does it go?", "30 * 2 = <<30*2=60>>60 miles.\n#### 60")]


def write_gsm8k(root: Path, problems=PROBLEMS, train=TRAIN) -> Path:
    """A handful of problems in GSM8K's own jsonl format: test.jsonl, and train.jsonl for the shots."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in problems))
    (root / "train.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in train))
    return root


def base_recipe(**eval_section) -> dict:
    return {"name": "ev", "model": {"path": "/models/oracle", "served_name": "oracle"}, "topology": "1A TP1",
            "frontend": {"server": "engine"}, "benchmark": {"concurrency": [1, 4]}, **({"eval": eval_section} if eval_section else {})}


# --- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("response,strict,flexible", [
    ("3 + 4 = 7\n#### 7", "7", "7"),
    ("The answer is 1,200 dollars.", "[invalid]", "1200"),  # no '####': only the last number counts
    ("#### 300.", "300", "300"),
    ("#### $300", "[invalid]", "300"),  # lm-eval's strict pattern takes no dollar sign
    ("I think 5 then 6", "[invalid]", "6"),
    ("no number at all", "[invalid]", "[invalid]"),
    ("#### -4", "-4", "-4"),
])
def test_final_number_extraction(response, strict, flexible):
    assert gsm8k.extract(response) == {"strict-match": strict, "flexible-extract": flexible}


def test_exact_match_against_the_reference_number():
    p = gsm8k.Problem(*PROBLEMS[4])
    assert p.target == "300"
    assert gsm8k.score("1200 / 4 = 300\n#### 300", p) == {"strict-match": 1, "flexible-extract": 1}
    assert gsm8k.score("so 300 books, not 301", p) == {"strict-match": 0, "flexible-extract": 0}
    assert gsm8k.score("300 books per shelf", p) == {"strict-match": 0, "flexible-extract": 1}


def test_chat_prompt_puts_the_shots_before_the_problem_as_turns():
    msgs = gsm8k.messages(gsm8k.Problem(*PROBLEMS[0]), [gsm8k.Problem(*t) for t in TRAIN])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"].endswith("#### 5") and PROBLEMS[0][0] in msgs[-1]["content"]
    assert msgs[-1]["content"].endswith("Answer:") and "####" in msgs[-1]["content"]


# --- the recipe section and bad input -----------------------------------------------------------


@pytest.mark.parametrize("section,field,says", [
    ({"tasks": [{"name": "mmlu", "dataset": "/d"}]}, "eval.tasks.0.name", "gsm8k"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d", "threshold": 1.5}]}, "eval.tasks.0.threshold", "less than or equal to 1"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d", "threshold": -0.1}]}, "eval.tasks.0.threshold", "greater than or equal to 0"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d", "model_thresholds": {"dsr1": 2}}]}, "eval.tasks.0.model_thresholds.dsr1", "1"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d"}], "limit": 0}, "eval.limit", "greater than or equal to 1"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d"}], "concurrency": 0}, "eval.concurrency", "greater than or equal to 1"),
    ({"tasks": []}, "eval.tasks", "at least 1"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d"}, {"name": "gsm8k", "dataset": "/e"}]}, "eval.tasks", "listed twice"),
    ({"tasks": [{"name": "gsm8k", "dataset": "/d", "shots": 5}]}, "eval.tasks.0.shots", "unknown field"),
])
def test_bad_eval_section_is_one_line_naming_the_field(section, field, says):
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict(base_recipe(**section))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{field}:") and says in msg, msg


def test_eval_flags_on_a_recipe_without_an_eval_section_say_so_by_name():
    recipe = Recipe.from_dict(base_recipe())
    with pytest.raises(RecipeError) as e:
        require_eval_section(recipe.eval, {"eval.run": "only"})
    assert str(e.value).startswith("eval:") and "no eval: section" in str(e.value)
    require_eval_section(recipe.eval, {"benchmark.concurrency": [1]})  # nothing about evals: nothing to say
    # InferenceX's switches become the same overrides; EVAL_ONLY wins over RUN_EVAL.
    env = from_environ({"RUN_EVAL": "true", "EVAL_ONLY": "true", "EVAL_LIMIT": "8", "EVAL_CONC": "2"})
    assert env.sets == {"eval.run": "only", "eval.limit": 8, "eval.concurrency": 2}
    with pytest.raises(RecipeError, match="^EVAL_LIMIT"):
        from_environ({"EVAL_LIMIT": "0"})


def test_missing_or_malformed_dataset_is_an_error_before_submit(tmp_path):
    spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": str(tmp_path / "nowhere")}]})
    with pytest.raises(RecipeError, match=r"^eval\.tasks\.0\.dataset: .*no such directory"):
        check_data(spec)
    d = write_gsm8k(tmp_path / "g")
    (d / "test.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(RecipeError, match=r"^eval\.tasks\.0\.dataset: .*test.jsonl:1.*'#### N'"):
        check_data(spec.model_copy(update={"tasks": [spec.tasks[0].model_copy(update={"dataset": str(d)})]}))
    d = write_gsm8k(tmp_path / "h", train=TRAIN[:1])
    spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": str(d), "num_fewshot": 2}]})
    with pytest.raises(RecipeError, match=r"^eval\.tasks\.0\.num_fewshot: .*only 1 examples"):
        check_data(spec)


def test_threshold_resolution_model_then_task_then_default_then_floor():
    spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": "/d", "threshold": 0.7, "model_thresholds": {"dsr1": 0.91}}]})
    t = spec.tasks[0]
    assert spec.threshold(t, "dsr1") == 0.91 and spec.threshold(t, "other") == 0.7
    plain = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": "/d"}]})
    assert plain.threshold(plain.tasks[0], "x") == 0.90 and plain.min_score == 0.85


# --- the runner against a server that knows the answers ------------------------------------------


def test_oracle_server_scores_one_and_passes_a_high_threshold(tmp_path):
    data_dir = write_gsm8k(tmp_path / "gsm8k")
    server = serve_in_thread(data_dir / "test.jsonl")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": str(data_dir), "num_fewshot": 2, "threshold": 0.95}],
                                        "limit": 5, "max_tokens": 64})
        data = load_task(spec.tasks[0], spec, 0)
        out = run_task(url, "oracle", spec.tasks[0], spec, data, 3, threading.Event())
    finally:
        server.shutdown()
    assert len(server.seen) == 5 and all(len(r["messages"]) == 5 and r["temperature"] == 0 and r["max_tokens"] == 64 for r in server.seen)
    res = task_result(out, spec.threshold(spec.tasks[0], "oracle"))
    assert res["score"] == 1.0 and res["score_flexible"] == 1.0 and res["n"] == 5 and res["passed"] is True
    assert res["stderr"] == 0.0 and res["threshold"] == 0.95
    doc = lm_eval_doc(out, model="oracle", url=url, concurrency=3, max_tokens=64, limit=5, date=0.0)
    assert doc["results"]["gsm8k"]["exact_match,strict-match"] == 1.0 and doc["n-samples"]["gsm8k"] == {"original": 5, "effective": 5}
    assert "lm_eval_version" not in doc and doc["configs"]["gsm8k"]["num_fewshot"] == 2


def test_wrong_answers_score_their_share_and_fail(tmp_path):
    """A server that knows only some answers: the score is its share, with lm-eval's stderr."""
    data_dir = write_gsm8k(tmp_path / "gsm8k")
    known = write_gsm8k(tmp_path / "known", problems=PROBLEMS[:2])
    server = serve_in_thread(known / "test.jsonl")
    try:
        spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": str(data_dir), "num_fewshot": 0}]})
        out = run_task(f"http://127.0.0.1:{server.server_address[1]}", "oracle", spec.tasks[0], spec,
                       load_task(spec.tasks[0], spec, 0), 2, threading.Event())
    finally:
        server.shutdown()
    res = task_result(out, 0.5)
    assert res["n"] == 6 and res["score"] == pytest.approx(2 / 6, abs=1e-4) and res["passed"] is False
    assert res["stderr"] == pytest.approx(((2 / 6) * (4 / 6) * 6 / 5 / 6) ** 0.5, abs=1e-4)


def test_unreachable_endpoint_is_an_eval_failure(tmp_path):
    spec = EvalSpec.model_validate({"tasks": [{"name": "gsm8k", "dataset": str(write_gsm8k(tmp_path / "g")), "num_fewshot": 0}],
                                    "limit": 1, "request_timeout_s": 2})
    with pytest.raises(EvalFailed, match="did not answer after 3 tries"):
        run_task("http://127.0.0.1:9", "oracle", spec.tasks[0], spec, load_task(spec.tasks[0], spec, 0), 1, threading.Event())


def test_eval_step_writes_inferencex_files_and_the_summary_block(tmp_path):
    data_dir = write_gsm8k(tmp_path / "gsm8k")
    server = serve_in_thread(data_dir / "test.jsonl")
    recipe = Recipe.from_dict(base_recipe(tasks=[{"name": "gsm8k", "dataset": str(data_dir), "num_fewshot": 1}], limit=4))
    events, watched = [], []
    try:
        block = run_evals(recipe, f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "job",
                          lambda what, **kw: events.append(what), lambda: watched.append(1))
    finally:
        server.shutdown()
    # Default concurrency: the highest benchmark one; default gsm8k threshold: InferenceX's 0.90.
    assert block["concurrency"] == 4 and block["passed"] is True and events == ["eval", "eval done"] and watched
    (t,) = block["tasks"]
    assert (t["task"], t["score"], t["n"], t["threshold"], t["passed"]) == ("gsm8k", 1.0, 4, 0.90, True)
    results = [Path(f) for f in block["files"]]
    assert results[0].name.startswith("results_gsm8k_") and results[1].name.startswith("samples_gsm8k_")
    samples = [json.loads(line) for line in results[1].read_text().splitlines()]
    assert len(samples) == 4 and all(s["exact_match"]["strict-match"] == 1 for s in samples)
    table = format_table(block)
    assert "gsm8k  1.0000" in table and "pass" in table


# --- reporting and the CI gate ------------------------------------------------------------------


def block(score: float, threshold: float) -> dict:
    passed = score >= threshold
    return {"concurrency": 2, "seconds": 3.2, "passed": passed, "files": [],
            "tasks": [{"task": "gsm8k", "score": score, "score_flexible": score, "stderr": 0.1, "stderr_flexible": 0.1, "n": 8,
                       "num_fewshot": 0, "threshold": threshold, "passed": passed, "seconds": 3.1}]}


def test_compare_shows_the_accuracy_delta():
    text = compare(block(0.5, 0.0), block(0.625, 0.0))
    assert "+0.1250 ok" in text and "0.5000" in text and "0.6250" in text
    assert "-0.1250 !!" in compare(block(0.625, 0.0), block(0.5, 0.0))
    assert compare(None, block(0.5, 0.0)) == ""


def test_ci_report_for_accuracy_below_threshold(tmp_path):
    from inferx_slurm.ci import evals as ci_evals
    from inferx_slurm.ci.run import publish, result_labels
    from inferx_slurm.ci.env import CIEnv

    recipe = Recipe.from_dict(base_recipe(tasks=[{"name": "gsm8k", "dataset": "/d"}]))
    rep = cr.CIReport.start("ev")
    files = ci_evals.gather(rep, block(0.125, 0.5), recipe, result_labels(recipe, CIEnv()), 1, tmp_path)
    assert rep.exit_code == cr.EXIT_ACCURACY == 8 and rep.category == "accuracy"
    assert rep.diagnosis == "accuracy: gsm8k scored 0.1250 (flexible 0.1250) on 8 problems, below its threshold 0.50"
    meta = json.loads((tmp_path / "meta_env.json").read_text())
    assert files == [str(tmp_path / "meta_env.json")] and meta["conc"] == 2 and meta["eval_concs"] == [2]
    assert meta["tp"] == 1 and meta["is_multinode"] is False and meta["isl"] == "1024" and meta["framework"] == "vllm"
    out, summary = io.StringIO(), tmp_path / "summary.md"
    publish(rep, {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}, stdout=out)
    assert "::error title=inferx-slurm accuracy (exit 8)::accuracy: gsm8k scored 0.1250" in out.getvalue()
    md = summary.read_text()
    assert "FAILED: accuracy (exit 8)" in md and "### Accuracy (BELOW THRESHOLD" in md and "| gsm8k | 0.1250 |" in md and "**FAIL**" in md
    # A passing eval leaves the exit code alone.
    rep = cr.CIReport.start("ev")
    ci_evals.gather(rep, block(0.125, 0.0), recipe, result_labels(recipe, CIEnv()), 1, tmp_path)
    assert rep.exit_code == cr.EXIT_OK and cr.outputs(rep)["eval_passed"] == "true"


def cli(*argv: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "inferx_slurm", *argv], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_results_prints_the_eval_beside_the_throughput_and_compare_its_change(tmp_path):
    row = {"isl": 300, "osl": 16, "concurrency": 2, "tput_per_gpu": 100.0, "completed": 8, "failed": 0}
    for name, score in (("base", 0.5), ("new", 0.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"name": name, "topology": "1A TP1", "total_gpus": 1, "rows": [row], "eval": block(score, 0.6)}))
    out = cli("results", str(tmp_path / "new"))
    assert out.returncode == 0, out.stderr
    assert "tok/s/gpu" in out.stdout and "eval at concurrency 2" in out.stdout and "gsm8k  0.7500" in out.stdout and "pass" in out.stdout
    out = cli("results", str(tmp_path / "new"), "--compare", str(tmp_path / "base"))
    assert out.returncode == 0, out.stderr
    assert "accuracy (score change, new vs base)" in out.stdout and "+0.2500 ok" in out.stdout


def test_launch_eval_flag_without_an_eval_section_is_refused_by_name(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(base_recipe()))
    out = cli("launch", str(recipe), "--eval-only", "--dry-run")
    assert out.returncode == 2 and "eval:" in out.stderr and "no eval: section" in out.stderr, out.stderr


def test_ci_with_a_missing_dataset_exits_2_naming_the_field_before_submit(tmp_path):
    import yaml

    from inferx_slurm.ci.run import CIOptions, run_ci

    doc = yaml.safe_load((REPO / "recipes/agg/local/vllm-1a.yaml").read_text())
    doc["eval"] = {"tasks": [{"name": "gsm8k", "dataset": str(tmp_path / "absent")}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    code, rep = run_ci(CIOptions(recipe=str(tmp_path / "r.yaml"), sets={"eval.run": "after"}, site="none",
                                 out_dir=str(tmp_path / "out")), {})
    assert code == cr.EXIT_RECIPE and rep.diagnosis.startswith("eval.tasks.0.dataset:") and "no such directory" in rep.diagnosis
    assert rep.job_id is None


def test_a_fault_the_driver_sees_during_the_eval_stops_it():
    """The eval runs beside the driver's fault check: a dead worker ends it at once, and the
    runner is told to send nothing more."""
    from inferx_slurm.runtime.evals import watched

    calls, seen = [], threading.Event()

    def watch():
        calls.append(1)
        if len(calls) >= 2:
            raise RuntimeError("decode worker 0 exited")

    def work(stop):
        stop.wait(30)
        if stop.is_set():
            seen.set()

    with pytest.raises(RuntimeError, match="decode worker 0 exited"):
        watched(watch, work)
    assert seen.wait(5) and len(calls) == 2
