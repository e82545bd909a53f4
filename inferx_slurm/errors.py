"""User-facing errors.

Everything a user can get wrong (a recipe field, a topology string, a CLI flag) is raised as
:class:`RecipeError` carrying the field path, the bad value and what would be valid, so the CLI
can print one clear line and exit 2 instead of a traceback.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError


class InferxError(Exception):
    """Base class for errors the CLI reports without a traceback."""

    exit_code = 1


class RecipeError(InferxError, ValueError):
    """A recipe, topology or option is invalid. Raised before anything is submitted."""

    exit_code = 2

    def __init__(self, field: str, value: Any, valid: str, *, problems: Iterable[str] = ()):
        self.field = field
        self.value = value
        self.valid = valid
        self.problems = list(problems)
        if self.problems:
            message = "invalid recipe:\n" + "\n".join(f"  - {p}" for p in self.problems)
        else:
            message = f"{field}: got {value!r}; {valid}"
        super().__init__(message)

    @classmethod
    def from_validation(cls, err: ValidationError, *, prefix: str = "", model: Any = None) -> "RecipeError":
        """Turn pydantic's error list into one message per field, each naming what is valid."""
        lines = []
        first = None
        for e in err.errors():
            loc = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
            # pydantic repeats the model name for custom validators; the message already says it.
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden" and model is not None:
                known = _fields_at(model, list(e["loc"])[:-1])
                msg = "unknown field" + (f"; valid fields here: {', '.join(known)}" if known else "")
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{loc or '<recipe>'}: {msg}{shown}")
            if first is None:
                first = (loc, value, msg)
        loc, value, msg = first or ("<recipe>", None, "invalid")
        if len(lines) == 1:
            inst = cls(loc, value, msg)
            inst.args = (lines[0],)
            return inst
        return cls(loc, value, msg, problems=lines)


class FieldProblem(BaseModel):
    """One thing wrong with a recipe, kept as its parts until it is raised or shown."""

    model_config = ConfigDict(frozen=True)

    field: str
    value: Any
    valid: str

    def __str__(self) -> str:
        return f"{self.field}: {self.valid}"

    def error(self) -> RecipeError:
        return RecipeError(self.field, self.value, self.valid)


def raise_problems(problems: Sequence[FieldProblem], *, field: str, value: Any) -> None:
    """Raise one problem as its own RecipeError, several as one RecipeError (on `field`,
    `value`) listing each with its field."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        raise problems[0].error()
    if problems:
        raise RecipeError(field, value, "", problems=[str(p) for p in problems])


class SubmitError(InferxError):
    """Slurm refused or failed to run what we asked."""

    exit_code = 1


def _fields_at(model: Any, loc: list[Any]) -> list[str]:
    """Field names of the nested pydantic model at `loc`, to suggest what was meant."""
    from typing import get_args

    cls = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *get_args(ann)]
        nxt = next((c for c in candidates if hasattr(c, "model_fields")), None)
        if nxt is None:
            for c in candidates:
                nxt = next((a for a in get_args(c) if hasattr(a, "model_fields")), None)
                if nxt:
                    break
        if nxt is None:
            return []
        cls = nxt
    return sorted(getattr(cls, "model_fields", {}))
