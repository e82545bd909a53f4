"""Per-node GPU sampler: energy counter, power, utilization and memory of every visible GPU,
through NVML on NVIDIA nodes and amdsmi on AMD nodes.

Runs as one srun step per node next to the engines and appends one JSON line per sample:
{"t": unix time, "gpus": [{"i": 0, "energy_j": ..., "power_w": ..., "util_pct": ..., "mem_used_gb": ...}, ...]}.
`energy_j` is the GPU's own energy counter (NVML's total energy since the driver loaded; AMD's
energy accumulator), which integrates power exactly between two readings; `power_w` is the
sensor's power, integrated only where a GPU has no counter. The first line names the source.
NVML is reached through ctypes, so NVIDIA nodes need nothing but the driver; amdsmi is the
Python library ROCm ships (the amd-smi CLI's own backend). On a node with neither it writes one
line saying why and exits 0, and the results say "no data".
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional


class _Util(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Mem(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class NVML:
    def __init__(self, lib: Optional[str] = None):
        self.lib = ctypes.CDLL(lib or "libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2(), "nvmlInit")
        count = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        self.handles = []
        for i in range(count.value):
            h = ctypes.c_void_p()
            self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)), "nvmlDeviceGetHandleByIndex")
            self.handles.append(h)
        # Volta and newer; an older driver library lacks the call altogether.
        self.has_energy = hasattr(self.lib, "nvmlDeviceGetTotalEnergyConsumption")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            self.lib.nvmlErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"{what} failed: {self.lib.nvmlErrorString(rc).decode()}")

    def energy_mj(self, h: Any) -> Optional[int]:
        """The GPU's energy counter in mJ since the driver loaded; None when not supported."""
        mj = ctypes.c_ulonglong()
        if self.has_energy and self.lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(mj)) == 0:
            return mj.value
        return None

    def sample(self) -> list[dict[str, Any]]:
        out = []
        for i, h in enumerate(self.handles):
            mw, util, mem = ctypes.c_uint(), _Util(), _Mem()
            row: dict[str, Any] = {"i": i}
            # A GPU may not report one of these (no power sensor); keep the others.
            if (mj := self.energy_mj(h)) is not None:
                row["energy_j"] = mj / 1000.0
            if self.lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(mw)) == 0:
                row["power_w"] = mw.value / 1000.0
            if self.lib.nvmlDeviceGetUtilizationRates(h, ctypes.byref(util)) == 0:
                row["util_pct"] = float(util.gpu)
            if self.lib.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem)) == 0:
                row["mem_used_gb"] = mem.used / 1e9
            out.append(row)
        return out

    def close(self) -> None:
        self.lib.nvmlShutdown()


def _import_amdsmi() -> Any:
    try:
        import amdsmi  # type: ignore[import-not-found]
    except ImportError:
        # ROCm installs the package beside the CLI; the host python3 may not have it on its path.
        sys.path.append(os.path.join(os.environ.get("ROCM_PATH", "/opt/rocm"), "share", "amd_smi"))
        import amdsmi  # type: ignore[import-not-found]
    return amdsmi


def _watts(v: Any) -> Optional[float]:
    # amdsmi reports a value the ASIC does not have as "N/A" (0xFFFF in the C struct).
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0xFFFF else None


class AMDSMI:
    """AMD GPUs through amdsmi: the energy accumulator (ticks x counter_resolution uJ), socket
    power, graphics activity and VRAM use."""

    def __init__(self) -> None:
        self.smi = _import_amdsmi()
        self.error = getattr(self.smi, "AmdSmiException", Exception)
        try:
            self.smi.amdsmi_init()
            self.handles = list(self.smi.amdsmi_get_processor_handles())
        except self.error as e:
            raise RuntimeError(f"amdsmi: {e}") from None
        if not self.handles:
            self.close()
            raise RuntimeError("amdsmi sees no AMD GPU")

    def _call(self, name: str, h: Any) -> Optional[dict[str, Any]]:
        try:
            return getattr(self.smi, name)(h)
        except self.error:
            return None  # not supported on this GPU (the energy counter is not, in a VM guest)

    def sample(self) -> list[dict[str, Any]]:
        out = []
        for i, h in enumerate(self.handles):
            row: dict[str, Any] = {"i": i}
            if (e := self._call("amdsmi_get_energy_count", h)) is not None:
                # The resolution is per ASIC: read it with every sample, never assume it.
                row["energy_j"] = e["energy_accumulator"] * e["counter_resolution"] / 1e6
            if (p := self._call("amdsmi_get_power_info", h)) is not None:
                # As amd-smi's socket_power: the average where the ASIC reports it, else the current.
                w = _watts(p.get("average_socket_power"))
                w = w if w is not None else _watts(p.get("current_socket_power"))
                if w is not None:
                    row["power_w"] = w
            if (a := self._call("amdsmi_get_gpu_activity", h)) is not None and _watts(a.get("gfx_activity")) is not None:
                row["util_pct"] = float(a["gfx_activity"])
            if (m := self._call("amdsmi_get_gpu_vram_usage", h)) is not None:
                row["mem_used_gb"] = m["vram_used"] / 1000.0  # amdsmi reports MB
            out.append(row)
        return out

    def close(self) -> None:
        try:
            self.smi.amdsmi_shut_down()
        except self.error:
            pass


def open_source() -> tuple[Optional[Any], str]:
    """The first GPU library that answers on this node, and its name or why none did."""
    try:
        return NVML(os.environ.get("INFERX_NVML_LIB")), "nvml"
    except (OSError, RuntimeError) as e:
        nvml_error = str(e)
    try:
        return AMDSMI(), "amdsmi"
    except (ImportError, OSError, RuntimeError) as e:
        return None, f"NVML: {nvml_error}; amdsmi: {e}"


def run(out: Path, interval: float, duration: Optional[float] = None) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    with open(out, "a") as f:
        gpus, source = open_source()
        if gpus is None:
            f.write(json.dumps({"t": time.time(), "host": socket.gethostname(), "nvml": False, "reason": source}) + "\n")
            return 0
        f.write(json.dumps({"t": time.time(), "host": socket.gethostname(), "nvml": source == "nvml", "source": source,
                            "gpus": len(gpus.handles)}) + "\n")
        end = None if duration is None else time.time() + duration
        try:
            while not stop["now"] and (end is None or time.time() < end):
                f.write(json.dumps({"t": time.time(), "gpus": gpus.sample()}) + "\n")
                f.flush()
                time.sleep(interval)
        finally:
            gpus.close()
    return 0


def summarize(path: Path, start: float, end: float) -> Optional[dict[str, Any]]:
    """Mean power and utilization per GPU, and peak memory, over samples in [start, end]."""
    if not path.exists():
        return None
    power: list[float] = []
    util: list[float] = []
    mem = 0.0
    gpus = 0
    with open(path) as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc.get("gpus"), list) or not start <= doc.get("t", 0) <= end:
                continue
            gpus = max(gpus, len(doc["gpus"]))
            power += [g["power_w"] for g in doc["gpus"] if "power_w" in g]
            util += [g["util_pct"] for g in doc["gpus"] if "util_pct" in g]
            mem = max([mem] + [g.get("mem_used_gb", 0.0) for g in doc["gpus"]])
    if not gpus:
        return None
    return {
        "gpus": gpus,
        "avg_power_w_per_gpu": sum(power) / len(power) if power else None,
        "avg_util_pct": sum(util) / len(util) if util else None,
        "peak_mem_used_gb": mem,
    }


def gpu_metrics(log_dir: Path, hosts: list[str], start: float, end: float) -> dict[str, Any]:
    """Results-row fields for one benchmark window: per node, and means over every sampled GPU."""
    per_node = {h: s for h in hosts if (s := summarize(log_dir / f"gpu-{h}.jsonl", start, end))}
    if not per_node:
        return {"gpu_nodes": {}, "avg_gpu_power_w": None, "avg_gpu_util_pct": None}

    def mean(key: str) -> Optional[float]:
        pairs = [(s[key], s["gpus"]) for s in per_node.values() if s[key] is not None]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None

    return {"gpu_nodes": per_node, "avg_gpu_power_w": mean("avg_power_w_per_gpu"), "avg_gpu_util_pct": mean("avg_util_pct")}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferx_slurm.runtime.gpumon", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="JSON-lines file to append samples to")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until SIGTERM)")
    a = p.parse_args(argv)
    return run(a.out, a.interval, a.duration)


if __name__ == "__main__":
    sys.exit(main())
