"""An eval's results: per task score, stderr, n, threshold and verdict, the lm-eval-shaped
result file InferenceX collects, and the tables that show them. Pure: no I/O."""

from __future__ import annotations

from typing import Any, Optional

from inferx_slurm.evals.gsm8k import FILTERS
from inferx_slurm.evals.runner import TaskOutcome

HARNESS = "inferx-slurm built-in exact-match runner"


def task_result(out: TaskOutcome, threshold: float) -> dict[str, Any]:
    """One task's line in summary.json. It passes when every filter's score reaches the
    threshold, as InferenceX's validate_scores checks both strict and flexible matches."""
    scores = {f: out.mean(f) for f in FILTERS}
    return {
        "task": out.task, "score": round(scores["strict-match"], 4), "score_flexible": round(scores["flexible-extract"], 4),
        "stderr": _round(out.stderr("strict-match")), "stderr_flexible": _round(out.stderr("flexible-extract")),
        "n": len(out.samples), "num_fewshot": out.num_fewshot, "threshold": threshold,
        "passed": bool(out.samples) and all(s >= threshold for s in scores.values()), "seconds": out.seconds,
    }


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 4)


def lm_eval_doc(out: TaskOutcome, *, model: str, url: str, concurrency: int, max_tokens: int,
                limit: Optional[int], date: float) -> dict[str, Any]:
    """The task's result in lm-eval's results_*.json layout (results, configs, n-samples), the
    fields InferenceX's collector and score check read. It names its harness; it claims no
    lm_eval_version, as lm-eval did not write it."""
    res: dict[str, Any] = {"alias": out.task}
    for f in FILTERS:
        res[f"exact_match,{f}"] = out.mean(f)
        res[f"exact_match_stderr,{f}"] = out.stderr(f) if out.stderr(f) is not None else "N/A"
    return {
        "results": {out.task: res},
        "configs": {out.task: {
            "task": out.task, "num_fewshot": out.num_fewshot, "output_type": "generate_until",
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "filter_list": [{"name": "strict-match"}, {"name": "flexible-extract"}],
            "generation_kwargs": {"max_tokens": max_tokens, "temperature": 0, "top_p": 1},
        }},
        "n-samples": {out.task: {"original": out.original, "effective": len(out.samples)}},
        "config": {"model": "local-chat-completions", "model_args": f"model={model},base_url={url}/v1/chat/completions,"
                   f"num_concurrent={concurrency}", "limit": limit, "apply_chat_template": True,
                   "fewshot_as_multiturn": True},
        "harness": HARNESS,
        "date": date,
        "total_evaluation_time_seconds": str(out.seconds),
    }


def failures(block: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks below their threshold."""
    return [t for t in (block or {}).get("tasks", []) if not t.get("passed")]


def failure_line(t: dict[str, Any]) -> str:
    return (f"accuracy: {t['task']} scored {t['score']:.4f} (flexible {t['score_flexible']:.4f}) on {t['n']} problems, "
            f"below its threshold {t['threshold']:.2f}")


def _f(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(float(v), spec)


def table_rows(block: Optional[dict[str, Any]]) -> list[list[str]]:
    """Header and one line per task: the eval table of `results` and the CI step summary."""
    rows = [["task", "score", "flexible", "stderr", "n", "shots", "threshold", "verdict", "seconds"]]
    for t in (block or {}).get("tasks", []):
        rows.append([t["task"], _f(t["score"]), _f(t["score_flexible"]), _f(t.get("stderr")), str(t["n"]),
                     str(t.get("num_fewshot", "-")), _f(t["threshold"], ".2f"), "pass" if t["passed"] else "FAIL",
                     _f(t.get("seconds"), ".1f")])
    return rows


def format_table(block: Optional[dict[str, Any]]) -> str:
    if not block or not block.get("tasks"):
        return ""
    rows = table_rows(block)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    head = f"eval at concurrency {block.get('concurrency')}, {block.get('seconds')} s on the running engines"
    return head + "\n" + "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def compare(base: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> str:
    """Accuracy of two runs, per task both ran: the change in score, in points of the [0, 1] scale."""
    old = {t["task"]: t for t in (base or {}).get("tasks", [])}
    rows = [["task", "base", "new", "delta", "flexible delta"]]
    for t in (new or {}).get("tasks", []):
        o = old.get(t["task"])
        if o is None:
            continue
        d = t["score"] - o["score"]
        rows.append([t["task"], _f(o["score"]), _f(t["score"]), f"{d:+.4f}" + ("" if d == 0 else (" ok" if d > 0 else " !!")),
                     f"{t['score_flexible'] - o['score_flexible']:+.4f}"])
    if len(rows) == 1:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)
