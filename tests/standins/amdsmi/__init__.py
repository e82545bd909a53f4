"""Stand-in for ROCm's `amdsmi` Python package: the calls gpumon makes, with the signatures and
return shapes of ROCm/amdsmi's py-interface (amdsmi_interface.py), over two simulated MI300X
GPUs. GPU i draws (700 + 50 i) W; its energy accumulator counts ticks of `counter_resolution`
uJ from a fixed origin of the wall clock, so every process reads one counter, as processes on a
node read the driver's. AMDSMI_STANDIN_NO_ENERGY=1 makes the energy call fail as it does in a VM
guest (AMDSMI_STATUS_NOT_SUPPORTED); AMDSMI_STANDIN_POWER_NA=1 reports average_socket_power as
"N/A" (0xFFFF in the C struct), as some ASICs do, leaving current_socket_power."""

from __future__ import annotations

import os
import time
from enum import IntEnum

COUNTER_RESOLUTION_UJ = 15.259  # per tick; real ASICs report their own, and readers must not assume it
_GPUS = 2


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int):
        super().__init__(err_code)
        self.err_code = err_code

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported"


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2


class _Handle:
    def __init__(self, index: int):
        self.index = index


_state = {"init": False}


def _need_init() -> None:
    if not _state["init"]:
        raise AmdSmiLibraryException(32)  # AMDSMI_STATUS_NOT_INIT


def amdsmi_init(flag=AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
    _state["init"] = True


def amdsmi_shut_down() -> None:
    _state["init"] = False


def amdsmi_get_processor_handles() -> list:
    _need_init()
    return [_Handle(i) for i in range(_GPUS)]


def _watts(h: _Handle) -> int:
    return 700 + 50 * h.index


def amdsmi_get_energy_count(processor_handle: _Handle) -> dict:
    _need_init()
    if os.environ.get("AMDSMI_STANDIN_NO_ENERGY") == "1":
        raise AmdSmiLibraryException(2)
    now_ns = time.time_ns()
    joules = _watts(processor_handle) * (now_ns / 1e9)
    ticks = int(joules * 1e6 / COUNTER_RESOLUTION_UJ)
    return {"power": ticks, "energy_accumulator": ticks, "counter_resolution": COUNTER_RESOLUTION_UJ, "timestamp": now_ns}


def amdsmi_get_power_info(processor_handle: _Handle) -> dict:
    _need_init()
    w = _watts(processor_handle)
    avg = "N/A" if os.environ.get("AMDSMI_STANDIN_POWER_NA") == "1" else w
    return {"current_socket_power": w, "average_socket_power": avg, "gfx_voltage": 850, "soc_voltage": 900,
            "mem_voltage": 1100, "power_limit": 750}


def amdsmi_get_gpu_activity(processor_handle: _Handle) -> dict:
    _need_init()
    return {"gfx_activity": 80 + 10 * processor_handle.index, "umc_activity": 40, "mm_activity": "N/A"}


def amdsmi_get_gpu_vram_usage(processor_handle: _Handle) -> dict:
    _need_init()
    return {"vram_total": 196592, "vram_used": 150000}
