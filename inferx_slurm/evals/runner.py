"""The built-in eval runner: a task's problems through the deployment's OpenAI chat endpoint,
a few in flight at a time, each answer scored as it arrives.

Standard library only, so it runs in whatever interpreter drives the job, with no second
environment and nothing fetched at run time.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from inferx_slurm.errors import InferxError, RecipeError
from inferx_slurm.evals import gsm8k
from inferx_slurm.recipe.evals import EvalSpec, EvalTaskSpec

RETRIES = 3


class EvalFailed(InferxError):
    """The endpoint could not answer the eval's requests."""


@dataclass
class TaskData:
    problems: list[gsm8k.Problem]
    shots: list[gsm8k.Problem]


@dataclass
class TaskOutcome:
    task: str
    num_fewshot: int
    original: int  # problems in the dataset
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def mean(self, filt: str) -> float:
        return sum(s["exact_match"][filt] for s in self.samples) / len(self.samples) if self.samples else 0.0

    def stderr(self, filt: str) -> Optional[float]:
        """Standard error of the mean of the 0/1 scores (lm-eval's mean_stderr)."""
        n = len(self.samples)
        if n < 2:
            return None
        m = self.mean(filt)
        var = sum((s["exact_match"][filt] - m) ** 2 for s in self.samples) / (n - 1)
        return math.sqrt(var / n)


def load_task(spec: EvalTaskSpec, ev: EvalSpec, index: int) -> TaskData:
    """The task's problems (the first `limit`) and few-shot examples; errors name the recipe field."""
    where = f"eval.tasks.{index}.dataset"
    root = Path(spec.dataset)
    if not root.is_dir():
        raise RecipeError(where, spec.dataset, f"no such directory: a local directory holding {gsm8k.TEST_FILE}"
                          + (f" and {gsm8k.TRAIN_FILE}" if spec.num_fewshot else "") + " in GSM8K's format (datasets are never fetched at run time)")
    problems = gsm8k.load(root / gsm8k.TEST_FILE, where)
    shots: list[gsm8k.Problem] = []
    if spec.num_fewshot:
        shots = gsm8k.load(root / gsm8k.TRAIN_FILE, where)[: spec.num_fewshot]
        if len(shots) < spec.num_fewshot:
            raise RecipeError(f"eval.tasks.{index}.num_fewshot", spec.num_fewshot,
                              f"{root / gsm8k.TRAIN_FILE} holds only {len(shots)} examples; lower num_fewshot or add examples")
    return TaskData(problems[: ev.limit] if ev.limit else problems, shots)


def check_data(ev: EvalSpec) -> None:
    """Every task's data is there and well formed: before anything is submitted."""
    for i, t in enumerate(ev.tasks):
        load_task(t, ev, i)


def chat(url: str, model: str, messages: list[dict[str, str]], max_tokens: int, timeout_s: float) -> str:
    """One greedy chat completion; a reasoning model's answer may come as reasoning_content alone."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "top_p": 1}).encode()
    last: Exception | None = None
    for attempt in range(RETRIES):
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                msg = json.load(r)["choices"][0]["message"]
            return msg.get("content") or msg.get("reasoning_content") or ""
        except urllib.error.HTTPError as e:
            last = e
            if e.code < 500:  # the request itself is wrong: another try gets the same answer
                break
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as e:
            last = e
        time.sleep(1.0 * (attempt + 1))
    detail = last.read().decode(errors="replace")[:300] if isinstance(last, urllib.error.HTTPError) else ""
    raise EvalFailed(f"{url}/v1/chat/completions did not answer after {RETRIES} tries: {last!r} {detail}".rstrip())


def run_task(url: str, model: str, spec: EvalTaskSpec, ev: EvalSpec, data: TaskData, concurrency: int,
             stop: threading.Event, on_done: Callable[[int, int], None] = lambda done, total: None) -> TaskOutcome:
    """Every problem of the task through the endpoint, `concurrency` at a time; `stop` ends it early."""
    out = TaskOutcome(task=spec.name.value, num_fewshot=spec.num_fewshot, original=len(data.problems))
    started = time.time()
    lock = threading.Lock()

    def one(i: int, p: gsm8k.Problem) -> None:
        if stop.is_set():
            return
        msgs = gsm8k.messages(p, data.shots)
        response = chat(url, model, msgs, ev.max_tokens, ev.request_timeout_s)
        sample = {"doc_id": i, "doc": {"question": p.question, "answer": p.answer}, "target": p.target,
                  "arguments": msgs, "resps": [response], "filtered_resps": gsm8k.extract(response),
                  "exact_match": gsm8k.score(response, p)}
        with lock:
            out.samples.append(sample)
            on_done(len(out.samples), len(data.problems))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, i, p) for i, p in enumerate(data.problems)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f.exception() for f in done if f.exception()), None)
        if failed:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)  # the problems not yet sent are not sent
            raise failed
    out.samples.sort(key=lambda s: s["doc_id"])
    out.seconds = round(time.time() - started, 2)
    return out
