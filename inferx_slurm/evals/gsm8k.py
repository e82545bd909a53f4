"""GSM8K: its data format, the chat prompt, and exact-match scoring of the final number.

The data is GSM8K's own jsonl (one ``{"question", "answer"}`` object a line, the answer's
worked solution ending in ``#### N``): ``test.jsonl`` holds the problems, ``train.jsonl`` the
solved few-shot examples. Scoring follows lm-eval's gsm8k task as InferenceX runs it: two
filters over the model's answer, each an exact match against the reference number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from inferx_slurm.errors import RecipeError

TEST_FILE = "test.jsonl"
TRAIN_FILE = "train.jsonl"

INSTRUCTION = ('Solve the following math problem step by step. The last line of your response should be of the form '
               '"#### [number]" where [number] is the final answer.')
# lm-eval's gsm8k filters: "strict-match" wants the '#### N' the prompt asks for; "flexible-extract"
# takes the last number anywhere in the answer.
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
FILTERS = ("strict-match", "flexible-extract")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the worked solution, ending in '#### N'

    @property
    def target(self) -> str:
        return normalize(self.answer.rsplit("####", 1)[1])


def normalize(text: str) -> str:
    """The number as exact match compares it: no thousands commas, dollar signs, spaces or final period."""
    return re.sub(r"[,$\s]", "", text).removesuffix(".")


def load(path: Path, field: str) -> list[Problem]:
    """Every problem of a GSM8K jsonl file; a bad line is an error naming `field` and the line."""
    if not path.is_file():
        raise RecipeError(field, str(path), "no such file: the dataset directory needs GSM8K's jsonl here "
                          "(one {\"question\", \"answer\"} object a line, the answer ending in '#### N')")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise RecipeError(field, f"{path}:{i}", "is not a JSON object; GSM8K's format is one "
                              "{\"question\", \"answer\"} object a line") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("question"), str) and isinstance(doc.get("answer"), str)
                and "####" in doc["answer"]):
            raise RecipeError(field, f"{path}:{i}", "needs string fields question and answer, the answer ending in '#### N'")
        out.append(Problem(doc["question"], doc["answer"]))
    if not out:
        raise RecipeError(field, str(path), "holds no problem")
    return out


def user_turn(question: str) -> str:
    return f"{INSTRUCTION}\n\nQuestion: {question}\nAnswer:"


def messages(problem: Problem, shots: list[Problem]) -> list[dict[str, str]]:
    """The chat request: each solved example a user and an assistant turn, then the problem."""
    out: list[dict[str, str]] = []
    for s in shots:
        out += [{"role": "user", "content": user_turn(s.question)}, {"role": "assistant", "content": s.answer}]
    return out + [{"role": "user", "content": user_turn(problem.question)}]


def extract(response: str) -> dict[str, str]:
    """What each filter reads as the model's final number ("[invalid]" when none)."""
    strict = STRICT.search(response)
    found = [a or b for a, b in FLEXIBLE.findall(response)]
    return {"strict-match": normalize(strict.group(1)) if strict else "[invalid]",
            "flexible-extract": normalize(found[-1]) if found else "[invalid]"}


def score(response: str, problem: Problem) -> dict[str, int]:
    """1 or 0 per filter: the extracted number equals the reference."""
    return {f: int(v == problem.target) for f, v in extract(response).items()}
