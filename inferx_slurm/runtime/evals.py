"""The eval step of a run: after the benchmark points (or alone), each task of the recipe's
`eval:` section through the deployment's endpoint, on the engines already up, while the
driver keeps watching them. Writes JOB/eval/ and returns the summary's `eval` block."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from inferx_slurm.evals.results import lm_eval_doc, task_result
from inferx_slurm.evals.runner import EvalFailed, load_task, run_task
from inferx_slurm.fsutil import atomic_write, atomic_write_json
from inferx_slurm.job.paths import JobPaths
from inferx_slurm.job.phases import EventKind
from inferx_slurm.recipe.evals import EvalRun
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.results.labels import model_prefix

WATCH_S = 0.5

__all__ = ["EvalFailed", "run_evals"]


def run_evals(recipe: Recipe, url: str, job_dir: Path, event: Callable[..., None], watch: Callable[[], None]) -> dict[str, Any]:
    """Run every task against `url` while `watch` (the driver's fault check) raises what it
    sees, which ends the eval at once. EvalFailed when the endpoint stops answering."""
    ev = recipe.eval
    assert ev is not None
    conc = ev.concurrency or max(recipe.benchmark.concurrency)
    model = recipe.model.name
    prefix = model_prefix(recipe, os.environ.get("MODEL_PREFIX"))
    out_dir = JobPaths(job_dir).eval
    out_dir.mkdir(parents=True, exist_ok=True)
    block: dict[str, Any] = {"run": ev.run.value, "concurrency": conc, "model_prefix": prefix, "url": url,
                             "tasks": [], "files": []}
    started = time.time()
    for i, spec in enumerate(ev.tasks):
        try:
            data = load_task(spec, ev, i)
        except Exception as e:  # the data went away after submit: say so rather than crash
            raise EvalFailed(f"eval data of {spec.name.value}: {e}") from None
        event(EventKind.eval, task=spec.name.value, problems=len(data.problems), shots=len(data.shots), concurrency=conc)
        out = watched(watch, lambda stop: run_task(url, model, spec, ev, data, conc, stop))
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())
        res, samples = out_dir / f"results_{out.task}_{stamp}.json", out_dir / f"samples_{out.task}_{stamp}.jsonl"
        atomic_write_json(res, lm_eval_doc(out, model=model, url=url, concurrency=conc, max_tokens=ev.max_tokens,
                                           limit=ev.limit, date=time.time()))
        atomic_write(samples, "".join(_jsonl(s) for s in out.samples))
        block["tasks"].append(task_result(out, ev.threshold(spec, prefix)))
        block["files"] += [str(res), str(samples)]
        event(EventKind.eval_done, **{k: block["tasks"][-1][k] for k in ("task", "score", "n", "threshold", "passed")})
    block["seconds"] = round(time.time() - started, 2)
    block["passed"] = all(t["passed"] for t in block["tasks"])
    return block


def wanted(recipe: Recipe) -> bool:
    return recipe.eval is not None and recipe.eval.run is not EvalRun.off


def benchmark_wanted(recipe: Recipe) -> bool:
    return recipe.eval is None or recipe.eval.run is not EvalRun.only


def _jsonl(doc: dict[str, Any]) -> str:
    return json.dumps(doc) + "\n"


def watched(watch: Callable[[], None], work: Callable[[threading.Event], Any]) -> Any:
    """`work` in a thread while the driver checks its steps; a fault stops the work and is raised."""
    stop = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work(stop)
        except BaseException as e:  # handed to the driver's thread, which reports it
            box["error"] = e

    t = threading.Thread(target=target, name="eval", daemon=True)
    t.start()
    try:
        while t.is_alive():
            watch()
            t.join(WATCH_S)
    except BaseException:
        stop.set()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
