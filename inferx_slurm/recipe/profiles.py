"""Environment profiles: what a platform needs set before an engine starts.

A profile gives defaults (GPUs per node, environment) that a recipe can override. The values
come from recipes that run on these platforms; the comments say what breaks without them.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    gpus_per_node: int
    gpu_memory_gb: Optional[float] = Field(None, description="memory of one GPU, for the memory planner")
    gpu_vendor: Literal["nvidia", "amd"] = Field("nvidia", description="decides how workers are pinned to their GPUs")
    hw: Optional[str] = Field(None, description="the hardware key InferenceX's results use (gb200, h100, h200, mi300x, "
                              "mi355x): the `hw` label when RUNNER_TYPE is unset; None: no InferenceX platform")
    arch: Optional[str] = Field(None, description="CPU architecture of the compute nodes (x86_64, aarch64; native: this "
                                "machine's), checked against the driver interpreter; None: unknown, not checked")
    native_formats: Optional[frozenset[str]] = Field(
        None,
        description="weight formats whose GEMMs run natively (held as stored); any other quantized format is held "
        "dequantized to BF16, except experts in moe_weight_only_formats. None: unknown, every format held as stored",
    )
    moe_weight_only_formats: frozenset[str] = Field(
        frozenset(),
        description="non-native formats whose MoE experts still run from the stored bytes (weight-only kernels that "
        "dequantize in registers); the dense layers of such a checkpoint are held in BF16",
    )
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

# Weight formats per GPU generation: what the tensor cores (and the engines' kernels) take as is.
# Hopper has FP8 tensor cores but no microscaling ones: MXFP8 MoE runs through Marlin/DeepGEMM
# weight-only paths from the stored bytes, while attention/dense/embedding weights are held
# dequantized to BF16 (seed 004: H100 DEP8 MiniMax-M3-MXFP8, "~20 GB of BF16-dequantized
# attention/dense/embedding weights next to its ~52 GB expert shard"). vLLM's Marlin kernels also
# serve MXFP4/NVFP4 experts weight-only on Hopper (vLLM quantization docs, FP4 Marlin).
_HOPPER = {
    "native_formats": frozenset({"bf16", "fp16", "fp32", "fp8"}),
    "moe_weight_only_formats": frozenset({"mxfp8", "mxfp4", "nvfp4"}),
}
# Blackwell's 5th-generation tensor cores take FP8 and the OCP microscaling formats (MXFP8,
# MXFP4) and NVFP4 natively (NVIDIA Blackwell architecture whitepaper); seed 003 serves the
# MXFP8 checkpoint on GB200 with no dequantization.
_BLACKWELL = {"native_formats": frozenset({"bf16", "fp16", "fp32", "fp8", "mxfp8", "mxfp4", "nvfp4"})}
# MI300X (gfx942): FP8 (e4m3fnuz) only; MXFP8 experts are dequantized to BF16 (seed 000:
# "gfx942 has no native MXFP8 MoE GEMM, so MXFP8 experts are dequantized to BF16").
_MI300X = {"native_formats": frozenset({"bf16", "fp16", "fp32", "fp8"})}
# MI355X (gfx950): FP8, MXFP8 and MXFP4 run natively through AITER (seed 002: MXFP8 auto-selects
# AITER_MXFP8, MXFP4 runs AITER_MXFP4_MXFP4); no NVFP4 support.
_MI355X = {"native_formats": frozenset({"bf16", "fp16", "fp32", "fp8", "mxfp8", "mxfp4"})}

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
        Profile(name="local", description="the embedded local Slurm cluster with mock engines", gpus_per_node=4, arch="native"),
        Profile(name="local-amd", description="the local cluster posing as AMD nodes (local-cluster up --gpu-vendor amd)",
                gpus_per_node=4, gpu_vendor="amd", arch="native"),
        Profile(name="gb200-nvl72", description="GB200 NVL72: 4 GPUs a node, KV transfer over MNNVL", gpus_per_node=4, gpu_memory_gb=186, arch="aarch64", hw="gb200", env=_GB200_KV_OVER_NVLINK, **_BLACKWELL),
        Profile(name="h100", description="H100 SXM: 8 GPUs a node, KV over NVLink/IB", gpus_per_node=8, hw="h100", arch="x86_64", gpu_memory_gb=80, env={"UCX_TLS": "cuda_copy,cuda_ipc,rc,tcp"}, **_HOPPER),
        Profile(name="h200", description="H200 SXM: 8 GPUs a node, KV over NVLink/IB", gpus_per_node=8, hw="h200", arch="x86_64", gpu_memory_gb=141, env={"UCX_TLS": "cuda_copy,cuda_ipc,rc,tcp"}, **_HOPPER),
        Profile(name="mi300x", description="AMD MI300X: 8 GPUs a node, ROCm with AITER kernels", gpus_per_node=8, hw="mi300x", gpu_memory_gb=192, gpu_vendor="amd", arch="x86_64", env=_ROCM_AITER, **_MI300X),
        Profile(name="mi355x", description="AMD MI355X: 8 GPUs a node, ROCm with AITER kernels", gpus_per_node=8, hw="mi355x", gpu_memory_gb=288, gpu_vendor="amd", arch="x86_64", env=_ROCM_AITER, **_MI355X),
    ]
}
