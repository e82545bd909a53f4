"""Parse engine command lines with the engines' own argument parsers; start nothing.

Runs inside an engine's virtual environment (not the project's): reads a JSON list of
{"id", "parser", "argv"} on stdin and writes a JSON list of results, one per command, to the
file named by its argument (engines log to stdout): {"id", "ok", "error", "flags"}. Parsers:

  dynamo.vllm    Dynamo's vLLM worker parser (its own flags + vLLM's AsyncEngineArgs), then
                 the engine args and the configs that need no model or GPU
  vllm serve     vLLM's own `vllm serve` subcommand parser and its validation, same configs
  sglang         SGLang's ServerArgs flags (`python -m sglang.launch_server`)
  dynamo.sglang  Dynamo's SGLang worker flags, then the SGLang flags it passes on

The machine has no GPU, so vLLM is told to use its CPU platform before it is imported.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def _argparse_error(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if "error:" in ln]
    return lines[-1].split("error:", 1)[1].strip() if lines else text.strip()[-500:]


def _validation_error(e: Exception) -> str:
    """A pydantic error as `--flag: message (got value)` per field; anything else as it reads."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            parts = [
                f"--{'.'.join(str(x) for x in err['loc']).replace('_', '-')}: {err['msg']} (got {err.get('input')!r})"
                for err in errors()
            ]
            if parts:
                return "; ".join(parts)
        except Exception:
            pass
    return f"{type(e).__name__}: {e}".strip()[:2000]


def _check_vllm_configs(engine_args) -> None:
    """Build the vLLM configs that need neither the model's files nor a GPU from the parsed args,
    so their own validators see the values (block size, memory fraction, speculative method)."""
    import dataclasses
    import typing

    from vllm.config import CacheConfig, SpeculativeConfig

    def kwargs_for(cls) -> dict:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return {n: getattr(engine_args, n) for n in names if hasattr(engine_args, n) and getattr(engine_args, n) is not None}

    if engine_args.attention_backend is not None:
        from vllm.config import AttentionConfig

        AttentionConfig.validate_backend_before(engine_args.attention_backend)

    kw = kwargs_for(CacheConfig)
    kw.pop("sliding_window", None)  # the model's, not the user's
    CacheConfig(**kw)

    spec = engine_args.speculative_config
    if spec:
        if not isinstance(spec, dict):
            raise ValueError(f"--speculative-config: expected a JSON object, got {spec!r}")
        fields = {f.name for f in dataclasses.fields(SpeculativeConfig) if f.init}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"--speculative-config: unknown keys {unknown}; SpeculativeConfig has {sorted(fields)}")
        methods = set()
        for arg in typing.get_args(SpeculativeConfig.__annotations__.get("method", "")) or ():
            methods |= set(typing.get_args(arg)) or {arg}
        for a in list(methods):
            methods |= set(typing.get_args(a))
        methods = {m for m in methods if isinstance(m, str)}
        if "method" in spec and methods and spec["method"] not in methods:
            raise ValueError(f"--speculative-config: method {spec['method']!r} is not one of {sorted(methods)}")
        n = spec.get("num_speculative_tokens")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"--speculative-config: num_speculative_tokens must be an integer >= 1, got {n!r}")


def parse_dynamo_vllm(argv: list[str]) -> None:
    from dynamo.vllm.args import parse_args

    config = parse_args(argv)  # Dynamo's and vLLM's parsers, then AsyncEngineArgs.from_cli_args
    _check_vllm_configs(config.engine_args)


def parse_vllm_serve(argv: list[str]) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if argv[:1] != ["serve"]:
        raise ValueError(f"expected `vllm serve ...`, got `vllm {' '.join(argv[:1])}`")
    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    cmd = ServeSubcommand()
    cmd.subparser_init(sub)
    args = parser.parse_args(argv)
    cmd.validate(args)
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    _check_vllm_configs(AsyncEngineArgs.from_cli_args(args))


def parse_sglang(argv: list[str]) -> None:
    import argparse

    from sglang.srt.server_args import ServerArgs

    # What sglang.launch_server builds. ServerArgs.from_cli_args would go on to read the
    # checkpoint's config, which is not on this machine; the parser has checked every flag.
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    parser.parse_args(argv)


class _ReachedModel(Exception):
    """Dynamo's SGLang parser accepted everything and asked for the checkpoint."""


def parse_dynamo_sglang(argv: list[str]) -> None:
    import asyncio

    import dynamo.sglang.args as dsa

    async def stop(*_a, **_k):
        raise _ReachedModel

    # parse_args runs Dynamo's parser, SGLang's parser and Dynamo's cross-checks, then fetches
    # the model and builds ServerArgs from its config; stop there (no checkpoint, no network).
    dsa.fetch_model = stop
    real = dsa.ServerArgs

    class _Stop(real):  # type: ignore[misc, valid-type]
        @classmethod
        def from_cli_args(cls, *_a, **_k):
            raise _ReachedModel

    dsa.ServerArgs = _Stop
    try:
        asyncio.run(dsa.parse_args(argv))
    except _ReachedModel:
        pass
    finally:
        dsa.ServerArgs = real


PARSERS = {
    "dynamo.vllm": parse_dynamo_vllm,
    "vllm serve": parse_vllm_serve,
    "sglang": parse_sglang,
    "dynamo.sglang": parse_dynamo_sglang,
}


def run_one(cmd: dict) -> dict:
    out = {"id": cmd["id"], "ok": False, "error": "", "flags": [a for a in cmd["argv"] if a.startswith("--")]}
    fn = PARSERS.get(cmd["parser"])
    if fn is None:
        out["error"] = f"no parser named {cmd['parser']!r}; known: {sorted(PARSERS)}"
        return out
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            fn(list(cmd["argv"]))
        out["ok"] = True
    except SystemExit as e:  # argparse rejecting a flag or a value
        out["error"] = _argparse_error(err.getvalue()) or f"parser exited with {e.code}"
    except Exception as e:  # a config validator rejecting a value
        out["error"] = _validation_error(e)
        if os.environ.get("ENGINE_ARGV_HARNESS_TRACEBACK"):
            out["traceback"] = traceback.format_exc()
    return out


def main() -> int:
    cmds = json.load(sys.stdin)
    results = [run_one(c) for c in cmds]
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
