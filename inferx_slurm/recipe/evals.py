"""The recipe's `eval:` section: accuracy checked on the deployment's own engines.

An eval sends a task's problems to the deployment's OpenAI chat endpoint (the Dynamo
frontend, or the engine's own server) after the benchmark points, on the engines already
running, scores the answers and gates each task on a threshold. Datasets are local files:
nothing is fetched from a hub when a job runs.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

from pydantic import Field, field_validator

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.sections import Strict


class EvalTask(str, Enum):
    """Tasks the built-in runner knows."""

    gsm8k = "gsm8k"


class EvalRun(str, Enum):
    after = "after"  # the benchmark points, then the eval on the same engines
    only = "only"  # the eval alone: no benchmark point
    off = "off"  # the section is kept but nothing is evaluated


# InferenceX's thresholds (utils/evals/thresholds.yaml): a task's default, and the floor for a
# task with none.
DEFAULT_THRESHOLDS: dict[EvalTask, float] = {EvalTask.gsm8k: 0.90}
MIN_SCORE = 0.85

Score = Annotated[float, Field(ge=0, le=1)]


class EvalTaskSpec(Strict):
    name: EvalTask = Field(description="the task: gsm8k (grade-school math, exact match on the final number)")
    dataset: str = Field(
        description="local directory of the task's data in its own format, e.g. for gsm8k test.jsonl (and train.jsonl for "
        "few-shot examples): one {question, answer} object a line, the answer ending in '#### N'")
    num_fewshot: int = Field(5, ge=0, le=64, description="solved examples from train.jsonl put before each problem as chat turns")
    threshold: Optional[Score] = Field(None, description="lowest passing score in [0, 1]; default: InferenceX's for the task "
                                       "(gsm8k 0.90), else eval.min_score")
    model_thresholds: dict[str, Score] = Field(
        default_factory=dict, description="threshold per model prefix (InferenceX's infmax_model_prefix, e.g. dsr1: 0.91); "
        "wins over threshold for that model")


class EvalSpec(Strict):
    """Accuracy on the deployment's own engines, gated per task."""

    run: EvalRun = Field(EvalRun.after, description="after: after the benchmark points; only: the eval alone; off: no eval")
    tasks: list[EvalTaskSpec] = Field(min_length=1, description="tasks to run, each named once")
    limit: Optional[int] = Field(None, ge=1, description="problems per task (the first N of test.jsonl); default: all")
    concurrency: Optional[int] = Field(None, ge=1, description="requests in flight; default: the highest benchmark concurrency")
    max_tokens: int = Field(1024, ge=1, description="most tokens the model may answer one problem with")
    min_score: Score = Field(MIN_SCORE, description="threshold of a task that neither it nor InferenceX sets")
    request_timeout_s: float = Field(600, gt=0, description="fail the eval when one answer takes longer than this")
    stage_dir: Optional[str] = Field(
        None, description="shared dir to copy each dataset into once (locked, complete or not at all) and read it from there")

    @field_validator("tasks")
    @classmethod
    def _once(cls, v: list[EvalTaskSpec]) -> list[EvalTaskSpec]:
        names = [t.name.value for t in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"task {dup} is listed twice; list each task once")
        return v

    def threshold(self, task: EvalTaskSpec, model_prefix: str) -> float:
        """The task's model threshold, its own, InferenceX's default for it, then the floor."""
        if model_prefix in task.model_thresholds:
            return task.model_thresholds[model_prefix]
        if task.threshold is not None:
            return task.threshold
        return DEFAULT_THRESHOLDS.get(task.name, self.min_score)


def require_eval_section(spec: Optional[EvalSpec], sets: dict[str, object]) -> None:
    """--eval, --eval-only, RUN_EVAL or EVAL_ONLY on a recipe with nothing to evaluate: say so by name."""
    if spec is None and any(k == "eval" or k.startswith("eval.") for k in sets):
        raise RecipeError("eval", None, "the recipe has no eval: section: add one with its tasks and their local datasets "
                          "(e.g. eval: {tasks: [{name: gsm8k, dataset: DIR}]}) to run an eval")
