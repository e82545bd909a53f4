"""Every engine command a recipe renders, parsed by that engine's own argument parser.

The commands are taken from the worker scripts `launch --dry-run` prints (every deployment of
a sweep), so what is checked is what would run. Each engine's parser lives in its own virtual
environment (setup_scripts/install_engines.sh); all commands for one environment are parsed
in one process by tests/engine_argv_harness.py, since importing an engine takes seconds.

Run directly to print which flags each engine parser accepted for each recipe:

    python3 tests/engine_conformance.py [RECIPE ...]
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "engine_argv_harness.py"
RECIPES_DIR = REPO / "recipes"

# Which virtual environment holds which parser (install_engines.sh puts them there).
VENVS = {
    "dynamo.vllm": os.environ.get("INFERX_VLLM_VENV", "/opt/vllm-venv"),
    "vllm serve": os.environ.get("INFERX_VLLM_VENV", "/opt/vllm-venv"),
    "sglang": os.environ.get("INFERX_SGLANG_VENV", "/opt/sglang-venv"),
    "dynamo.sglang": os.environ.get("INFERX_SGLANG_VENV", "/opt/sglang-venv"),
}
# Markers of an engine command in a rendered script; a line with one that cannot be read as a
# command fails the extraction rather than going unchecked.
_MARKERS = ("dynamo.vllm", "vllm serve", "vllm.entrypoints", "sglang.launch_server", "dynamo.sglang")
# Addresses the worker scripts resolve inside the job.
_ADDRS = {"${LEADER_ADDR}": "10.0.0.1", "${INFRA_ADDR}": "10.0.0.2"}


@dataclass
class EngineCommand:
    recipe: str  # path relative to the repo
    deployment: str
    script: str
    parser: str
    argv: list[str]  # what the engine's parser sees (no interpreter, no module)
    result: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.recipe}::{self.deployment}::{self.script}::{self.argv_hash}"

    @property
    def argv_hash(self) -> str:
        import hashlib

        return hashlib.sha1(json.dumps(self.argv).encode()).hexdigest()[:10]


def recipe_files() -> list[Path]:
    return sorted(p for p in RECIPES_DIR.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def classify(argv: list[str]) -> tuple[str, list[str]] | None:
    """(parser, the argv that parser sees) for an engine command; None for anything else."""
    if "-m" in argv:
        i = argv.index("-m")
        module, rest = argv[i + 1] if i + 1 < len(argv) else "", argv[i + 2:]
        if module == "dynamo.vllm":
            return "dynamo.vllm", rest
        if module == "dynamo.sglang":
            return "dynamo.sglang", rest
        if module == "sglang.launch_server":
            return "sglang", rest
        if module == "vllm.entrypoints.cli.main" and rest[:1] == ["serve"]:
            return "vllm serve", rest
        if module == "vllm.entrypoints.openai.api_server":
            # The module `vllm serve` runs takes the same flags, the model as --model.
            return "vllm serve", ["serve", *rest]
    for i, tok in enumerate(argv[:-1]):
        if Path(tok).name == "vllm" and argv[i + 1] == "serve":
            return "vllm serve", argv[i + 1:]
    return None


def commands_in_script(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for line in text.splitlines():
        code = line.split(" #", 1)[0].strip()
        if code.startswith("#") or not any(m in code for m in _MARKERS):
            continue
        code = code.removesuffix(";;").strip().removeprefix("reap_group; ").removeprefix("exec ").strip()
        try:
            argv = shlex.split(code)
        except ValueError as e:
            raise AssertionError(f"cannot read the engine command line {line!r}: {e}") from None
        argv = [_sub_addrs(a) for a in argv]
        found = classify(argv)
        if found is None:
            raise AssertionError(f"an engine command line that is no known engine entry point: {line!r}")
        out.append(found)
    return out


# Ports a step takes on its node at start (frontend.http_port, placement.port_base: auto) are
# shell variables in the rendered command; the parser sees a port number in their place.
_PORT_VAR = re.compile(r"\$\{INFERX_[A-Z_]*PORT\}")


def _sub_addrs(token: str) -> str:
    for k, v in _ADDRS.items():
        token = token.replace(k, v)
    return _PORT_VAR.sub("29500", token)


def engine_commands(path: Path) -> list[EngineCommand]:
    """Every engine command of every deployment of the recipe, as `launch --dry-run` renders it."""
    from inferx_slurm.recipe.schema import Recipe
    from inferx_slurm.job.render import render
    from inferx_slurm.sweeps.expand import expand

    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    out = []
    for d in expand(Recipe.load(path)):
        job = render(d.recipe, f"/results/{d.name}")
        for name, text in sorted(job.files.items()):
            for parser, argv in commands_in_script(text):
                out.append(EngineCommand(rel, d.name, name, parser, argv))
    return out


class MissingEngineVenv(RuntimeError):
    pass


class EngineUnavailable(RuntimeError):
    """The installer tried and recorded why this engine does not install on this machine."""


def venv_python(parser: str) -> Path:
    py = Path(VENVS[parser]) / "bin" / "python"
    why = Path(VENVS[parser]) / "NOT_INSTALLED"
    if why.exists():
        raise EngineUnavailable(f"{parser}: {why.read_text().strip()}")
    if not py.exists():
        raise MissingEngineVenv(
            f"no {parser} parser: {py} is missing; install it with `bash setup_scripts/install_engines.sh` "
            "(setup_scripts/install.sh does, and so does setup_scripts/test.sh)"
        )
    return py


def parse_all(cmds: list[EngineCommand], timeout: float = 900) -> list[EngineCommand]:
    """Fill each command's `result` from its engine's parser: one process per environment."""
    by_py: dict[Path, list[EngineCommand]] = {}
    for c in cmds:
        try:
            by_py.setdefault(venv_python(c.parser), []).append(c)
        except EngineUnavailable as e:
            c.result = {"ok": False, "unavailable": str(e), "error": ""}
    for py, group in by_py.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.json"
            payload = json.dumps([{"id": f"{i}", "parser": c.parser, "argv": c.argv} for i, c in enumerate(group)])
            proc = subprocess.run([str(py), str(HARNESS), str(out)], input=payload, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"{py} {HARNESS.name} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
            results = json.loads(out.read_text())
        for r in results:
            group[int(r["id"])].result = r
    return cmds


def failure_lines(cmds: list[EngineCommand]) -> list[str]:
    return [
        f"{c.recipe} ({c.deployment}, {c.script}): {c.parser} rejected it: {c.result.get('error') or 'no result'}\n"
        f"    argv: {shlex.join(c.argv)}"
        for c in cmds
        if not c.result.get("ok") and not c.result.get("unavailable")
    ]


def table(cmds: list[EngineCommand]) -> str:
    """recipe | parser | verdict | flags, one row per distinct (recipe, parser, flag set)."""
    rows, seen = [], set()
    for c in cmds:
        flags = " ".join(dict.fromkeys(a for a in c.argv if a.startswith("--")))
        key = (c.recipe, c.parser, flags)
        if key in seen:
            continue
        seen.add(key)
        verdict = ("accepted" if c.result.get("ok") else f"not checked: {c.result['unavailable']}" if c.result.get("unavailable")
                   else f"REJECTED: {c.result.get('error', '')}")
        rows.append(f"| {c.recipe} | {c.parser} | {verdict} | {flags} |")
    head = "| recipe | parser | verdict | flags |\n|---|---|---|---|"
    return "\n".join([head, *rows])


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or recipe_files()
    cmds = [c for p in paths for c in engine_commands(p)]
    parse_all(cmds)
    print(table(cmds))
    bad = failure_lines(cmds)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
