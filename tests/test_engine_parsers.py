"""Every engine command any recipe renders is accepted by that engine's own argument parser.

The parsers are the real ones at the pinned versions (Dynamo 1.6.1 + vLLM 0.31.0, SGLang where
it installs), in the virtual environments setup_scripts/install_engines.sh creates. A missing
environment fails these tests: the suite's set-up installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine_conformance import (
    REPO,
    EngineCommand,
    commands_in_script,
    engine_commands,
    failure_lines,
    parse_all,
    recipe_files,
    venv_python,
)

RECIPES = recipe_files()
ENGINE_BACKENDS = ("vllm", "sglang")


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[EngineCommand]]:
    """All recipes' engine commands, parsed once: one process per engine environment."""
    cmds = {str(p.relative_to(REPO)): engine_commands(p) for p in RECIPES}
    parse_all([c for group in cmds.values() for c in group])
    return cmds


def _backend(path: Path) -> str:
    return (yaml.safe_load(path.read_text()).get("engine") or {}).get("backend", "vllm")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_engine_parser_accepts_every_rendered_command(parsed, recipe):
    cmds = parsed[str(recipe.relative_to(REPO))]
    _skip_unavailable(cmds)
    if _backend(recipe) in ENGINE_BACKENDS:
        assert cmds, f"{recipe}: a {_backend(recipe)} recipe rendered no engine command to check"
    assert all(c.result for c in cmds), "a command got no result from its parser"
    bad = failure_lines(cmds)
    assert not bad, "\n".join(bad)


def _skip_unavailable(cmds: list[EngineCommand]) -> None:
    gone = sorted({c.result["unavailable"] for c in cmds if c.result.get("unavailable")})
    if gone:
        pytest.skip("; ".join(gone))


def test_every_engine_recipe_is_checked(parsed):
    engine_recipes = [p for p in RECIPES if _backend(p) in ENGINE_BACKENDS]
    assert engine_recipes, "no engine recipe under recipes/"
    checked = {c.recipe for group in parsed.values() for c in group if c.result.get("ok") or c.result.get("unavailable")}
    assert {str(p.relative_to(REPO)) for p in engine_recipes} <= checked


# Recipes an engine must refuse: each breaks the decode role of a shipped recipe one way.
REJECTED = {
    "unknown-flag": ({"not-a-flag": True}, "--not-a-flag", "unrecognized arguments"),
    "bad-choice": ({"kv-cache-dtype": "fp3"}, "--kv-cache-dtype", "invalid choice"),
    "out-of-range": ({"gpu-memory-utilization": 1.5}, "--gpu-memory-utilization", "less than or equal to 1"),
    "bad-backend": ({"attention-backend": "NO_SUCH_ATTN"}, "Unknown attention backend", "Valid options"),
    "bad-spec-method": ({"speculative-config": {"method": "eagle9", "num_speculative_tokens": 3}}, "--speculative-config", "eagle9"),
}
# The same recipe on SGLang: Dynamo's SGLang worker and SGLang's own server parse its commands.
SGLANG = {
    "ok": {"mem-fraction-static": 0.85, "max-running-requests": 16},
    "unknown-flag": {"not-a-flag": True},
    "bad-value": {"mem-fraction-static": "lots"},
}
SERVE = {
    "ok": ["serve", "/models/m", "--tensor-parallel-size", "8", "--block-size", "128", "--async-scheduling",
           "--max-num-batched-tokens", "16384"],
    "unknown-flag": ["serve", "/models/m", "--not-a-flag"],
    "bad-value": ["serve", "/models/m", "--block-size", "0"],
}


@pytest.fixture(scope="module")
def rejected(tmp_path_factory) -> dict[str, list[EngineCommand]]:
    """The broken recipes' commands and some `vllm serve` lines, parsed in one go."""
    tmp = tmp_path_factory.mktemp("rejected")
    src = REPO / "recipes" / "disagg" / "gb200" / "minimax-m3-1p1d-tp4-tep8-8k1k.yaml"
    out: dict[str, list[EngineCommand]] = {}
    for name, (role_args, _, _) in REJECTED.items():
        data = yaml.safe_load(src.read_text())
        data["engine"]["decode"]["args"].update(role_args)
        f = tmp / f"broken-{name}.yaml"
        f.write_text(yaml.safe_dump(data))
        out[name] = engine_commands(f)
    for name, role_args in SGLANG.items():
        data = yaml.safe_load(src.read_text())
        data["engine"] = {"backend": "sglang", "decode": {"args": role_args}}
        f = tmp / f"sglang-{name}.yaml"
        f.write_text(yaml.safe_dump(data))
        out[f"sglang-{name}"] = engine_commands(f)
        out[f"sglang-{name}-native"] = [
            EngineCommand(c.recipe, c.deployment, c.script, "sglang", [a for a in c.argv if a != "--disaggregation-transfer-backend" and a != "nixl"])
            for c in out[f"sglang-{name}"]
        ]
    for name, argv in SERVE.items():
        out[f"serve-{name}"] = [EngineCommand("serve.yaml", "d", "s", "vllm serve", argv)]
    parse_all([c for group in out.values() for c in group])
    return out


@pytest.mark.parametrize("case", list(REJECTED))
def test_a_flag_or_value_the_engine_rejects_fails_naming_recipe_and_flag(rejected, case):
    _, flag, says = REJECTED[case]
    cmds = rejected[case]
    decode = [c for c in cmds if c.argv[c.argv.index("--disaggregation-mode") + 1] == "decode"]
    prefill = [c for c in cmds if c not in decode]
    assert decode and prefill
    assert all(c.result["ok"] for c in prefill), failure_lines(prefill)
    lines = failure_lines(decode)
    assert len(lines) == len(decode), "every decode node's command must be rejected"
    for line in lines:
        assert line.split(" ", 1)[0].endswith(f"broken-{case}.yaml"), line
        assert flag in line and says in line, line


def test_vllm_serve_parser_is_strict(rejected):
    """The engine's own server (`vllm serve`), which aggregated recipes may render."""
    ok, flag, value = (rejected[f"serve-{k}"][0] for k in SERVE)
    assert ok.result["ok"], ok.result
    assert "unrecognized arguments: --not-a-flag" in flag.result["error"]
    assert "--block-size: Input should be greater than 0" in value.result["error"]


def test_script_extraction_reads_what_bash_would_run():
    script = (
        '    exec python3 -m dynamo.vllm --model /m --master-addr "${LEADER_ADDR}" '
        "--kv-transfer-config '{\"kv_connector\":\"NixlConnector\"}' ;;\n"
        "    exec /opt/venv/bin/vllm serve /m --port 8000 ;;\n"
        "    exec python3 -m sglang.launch_server --model-path /m ;;\n"
        "    exec python3 -m dynamo.frontend --http-port 8000\n"
    )
    assert commands_in_script(script) == [
        ("dynamo.vllm", ["--model", "/m", "--master-addr", "10.0.0.1", "--kv-transfer-config", '{"kv_connector":"NixlConnector"}']),
        ("vllm serve", ["serve", "/m", "--port", "8000"]),
        ("sglang", ["--model-path", "/m"]),
    ]
    with pytest.raises(AssertionError, match="no known engine entry point"):
        commands_in_script("    exec python3 -m dynamo.vllm.nope --x 1 ;;\n")


def test_missing_engine_environment_is_a_failure_with_the_fix(monkeypatch, tmp_path):
    import engine_conformance

    monkeypatch.setitem(engine_conformance.VENVS, "dynamo.vllm", str(tmp_path / "nowhere"))
    with pytest.raises(engine_conformance.MissingEngineVenv, match="install_engines.sh"):
        venv_python("dynamo.vllm")


@pytest.mark.parametrize("parser", ["dynamo.sglang", "sglang"])
def test_sglang_parsers_check_the_rendered_commands(rejected, parser):
    suffix = "" if parser == "dynamo.sglang" else "-native"
    ok, flag, value = (rejected[f"sglang-{k}{suffix}"] for k in SGLANG)
    _skip_unavailable(ok)
    assert ok and all(c.parser == parser for c in ok)
    assert all(c.result["ok"] for c in ok), failure_lines(ok)
    decode = lambda cmds: [c for c in cmds if "decode" in c.argv]  # noqa: E731
    assert all("unrecognized arguments: --not-a-flag" in line for line in failure_lines(decode(flag)))
    assert all("--mem-fraction-static: invalid float value: 'lots'" in line for line in failure_lines(decode(value)))
    assert len(failure_lines(flag)) == len(decode(flag)) == len(failure_lines(value)) >= 1
