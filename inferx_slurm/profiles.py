"""Environment profiles: what a platform needs set before an engine starts.

A profile gives defaults (GPUs per node, environment) that a recipe can override. The values
come from recipes that run on these platforms; the comments say what breaks without them.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    gpus_per_node: int
    gpu_memory_gb: Optional[float] = Field(None, description="memory of one GPU, for the feasibility check")
    env: dict[str, str] = Field(default_factory=dict)
    # Per-node cache dirs: concurrent builds into one shared cache dir deadlock (torch extensions,
    # triton, flashinfer JIT), so every node gets its own under this root unless the recipe says otherwise.
    per_node_cache_vars: tuple[str, ...] = (
        "TORCH_EXTENSIONS_DIR",
        "TRITON_CACHE_DIR",
        "FLASHINFER_WORKSPACE_BASE",
        "VLLM_CACHE_ROOT",
        "XDG_CACHE_HOME",
    )


_GB200_KV_OVER_NVLINK = {
    # NIXL over UCX: without cuda_ipc + MNNVL the KV transfer silently falls back to TCP.
    "UCX_TLS": "cuda_copy,cuda_ipc,tcp",
    "UCX_CUDA_IPC_ENABLE_MNNVL": "y",
    "UCX_MEMTYPE_CACHE": "n",
    "UCX_MEMTYPE_REG_WHOLE": "n",
    # cuMem-allocated buffers are IPC-exportable across the NVL72 fabric.
    "NCCL_CUMEM_ENABLE": "1",
}

_ROCM_AITER = {
    "VLLM_ROCM_USE_AITER": "1",
    "VLLM_ROCM_USE_AITER_MOE": "1",
    "HIP_FORCE_DEV_KERNARG": "1",
    "NCCL_MIN_NCHANNELS": "112",
}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(name="generic", description="no platform settings; 8 GPUs a node", gpus_per_node=8),
        Profile(name="local", description="the embedded local Slurm cluster with mock engines", gpus_per_node=4),
        Profile(name="gb200-nvl72", description="GB200 NVL72: 4 GPUs a node, KV transfer over MNNVL", gpus_per_node=4, gpu_memory_gb=186, env=_GB200_KV_OVER_NVLINK),
        Profile(name="h100", description="H100 SXM: 8 GPUs a node, KV over NVLink/IB", gpus_per_node=8, gpu_memory_gb=80, env={"UCX_TLS": "cuda_copy,cuda_ipc,rc,tcp"}),
        Profile(name="h200", description="H200 SXM: 8 GPUs a node, KV over NVLink/IB", gpus_per_node=8, gpu_memory_gb=141, env={"UCX_TLS": "cuda_copy,cuda_ipc,rc,tcp"}),
        Profile(name="mi300x", description="AMD MI300X: 8 GPUs a node, ROCm with AITER kernels", gpus_per_node=8, gpu_memory_gb=192, env=_ROCM_AITER),
        Profile(name="mi355x", description="AMD MI355X: 8 GPUs a node, ROCm with AITER kernels", gpus_per_node=8, gpu_memory_gb=288, env=_ROCM_AITER),
    ]
}
