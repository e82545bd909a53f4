"""The energy check on a real NVIDIA GPU: NVML's total-energy counter against the integral of
its sampled power, over a window of matrix-product load, through the sampler and the energy
arithmetic the jobs use (runtime/gpumon.py, runtime/energy.py).

It samples every GPU through gpumon's NVML reader at 10 Hz (default) in a thread, idles, runs
bf16 matrix products on one GPU for --seconds, idles again, then reports for that window:
- the counter read directly at the window's start and end (two NVML calls, as InferenceX's
  amd-smi sidecars do);
- the counter interpolated from the samples at the window's ends (what a results row uses);
- the sampled power integrated (trapezoids, ends interpolated: InferenceX's method, our fallback);
and their ratios. Needs torch with CUDA and the NVML library of the driver; nothing else from
the package (its two files are loaded by path, so pydantic and the rest need not be installed).

    python3 benchmarks/bench_energy.py --seconds 20 [--gpu 0] [--interval 0.1] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

RUNTIME = Path(__file__).resolve().parent.parent / "inferx_slurm" / "runtime"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"inferx_energy_check_{name}", RUNTIME / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


gpumon = load("gpumon")
energy = load("energy")


class Sampler(threading.Thread):
    """gpumon's NVML samples at a fixed period, as the per-node sampler writes them."""

    def __init__(self, nvml, interval: float):
        super().__init__(daemon=True)
        self.nvml, self.interval, self.samples, self.stop = nvml, interval, [], threading.Event()

    def run(self) -> None:
        next_t = time.time()
        while not self.stop.is_set():
            self.samples.append({"t": time.time(), "gpus": self.nvml.sample()})
            next_t += self.interval
            time.sleep(max(0.0, next_t - time.time()))


def load_gpu(device, seconds: float, size: int, read_counter) -> tuple[float, float, int, Any, Any]:
    """bf16 matrix products for `seconds`; returns the window (unix start, end), the count and
    the energy counter read right at the window's start and end."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.time()
    at_start = read_counter()
    n = 0
    while time.time() - start < seconds:
        for _ in range(20):
            a @ b
        n += 20
        torch.cuda.synchronize(device)
    end = time.time()
    at_end = read_counter()
    return start, end, n, at_start, at_end


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of the loaded window (default 20)")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device to load; NVML's index of the same GPU (PCI order)")
    p.add_argument("--interval", type=float, default=0.1, help="sampling period in s (default 0.1: 10 Hz)")
    p.add_argument("--idle", type=float, default=3.0, help="idle seconds before and after the load (default 3)")
    p.add_argument("--size", type=int, default=8192, help="matrix size (default 8192)")
    p.add_argument("--json", type=Path, help="also write the numbers and every sample here")
    a = p.parse_args(argv)
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's numbering = NVML's
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 2
    nvml = gpumon.NVML(os.environ.get("INFERX_NVML_LIB"))
    h = nvml.handles[a.gpu]
    first = nvml.energy_mj(h)
    if first is None:
        print("this GPU has no NVML energy counter (nvmlDeviceGetTotalEnergyConsumption): only the power integral is possible",
              file=sys.stderr)
    sampler = Sampler(nvml, a.interval)
    sampler.start()
    time.sleep(a.idle)
    start, end, products, direct_start, direct_end = load_gpu(torch.device("cuda", a.gpu), a.seconds, a.size, lambda: nvml.energy_mj(h))
    time.sleep(a.idle)
    sampler.stop.set()
    sampler.join()
    nvml.close()

    lines = [json.dumps(s) for s in sampler.samples]
    log = energy.parse_node_log(lines, start, end)
    counter, power = log.counters.get(a.gpu, []), log.power.get(a.gpu, [])
    e_counter, why_counter = energy.counter_joules(counter, start, end)
    e_power, why_power = energy.power_joules(power, start, end)
    # The direct reads follow load_gpu's own clock reads by the time of one NVML call.
    e_direct = (direct_end - direct_start) / 1000.0 if direct_start is not None and direct_end is not None else None
    window = end - start
    tflops = 2 * a.size**3 * products / window / 1e12
    out = {
        "gpu": a.gpu, "window_s": window, "interval_s": a.interval, "samples": len(sampler.samples),
        "matmul_tflops": tflops, "energy_counter_first_mj": first,
        "counter_direct_j": e_direct, "counter_interpolated_j": e_counter, "power_integral_j": e_power,
        "counter_reason": why_counter.value if why_counter else None, "power_reason": why_power.value if why_power else None,
    }
    if e_counter:
        out["avg_power_w_by_counter"] = e_counter / window
        if e_power:
            out["ratio_power_integral_to_counter"] = e_power / e_counter
        if e_direct:
            out["ratio_interpolated_to_direct_counter"] = e_counter / e_direct
    print(f"GPU {a.gpu}: {products} bf16 {a.size}^3 products in {window:.2f} s ({tflops:.0f} TFLOP/s), "
          f"{len(sampler.samples)} samples at {1 / a.interval:g} Hz")
    print(f"energy counter read at the window's ends:        {e_direct if e_direct is not None else 'n/a'} J")
    print(f"energy counter interpolated from the samples:    {e_counter if e_counter is not None else why_counter.value} J")
    print(f"sampled power integrated (trapezoids):          {e_power if e_power is not None else why_power.value} J")
    if "ratio_power_integral_to_counter" in out:
        print(f"average power by the counter: {out['avg_power_w_by_counter']:.1f} W")
        print(f"ratio power integral / counter: {out['ratio_power_integral_to_counter']:.4f}")
    if "ratio_interpolated_to_direct_counter" in out:
        print(f"ratio interpolated counter / direct counter: {out['ratio_interpolated_to_direct_counter']:.5f}")
    if a.json:
        a.json.write_text(json.dumps({**out, "samples_log": sampler.samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
