"""The recipe's sections. These pydantic models are the recipe format and its documentation.

A recipe says what to serve (model, container), where (Slurm settings, topology), how
(engine, frontend, environment) and what to measure (benchmark; the sweep over it is `sweep_spec`). Loading one
validates everything a user can get wrong before any job exists.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from inferx_slurm.recipe.engine_values import check_engine_args, check_env
from inferx_slurm.recipe.node_cache import NodeCacheSpec
from inferx_slurm.recipe.topology import ROLES


# A petabyte: any larger size is a typo, and would overflow byte counts in the memory planner.
MAX_GB = 1_000_000
ArgValue = Union[str, int, float, bool, None, list, dict]


class Strict(BaseModel):
    # Unknown keys are almost always typos ("concurency"); rejecting them names the field.
    model_config = ConfigDict(extra="forbid", validate_default=True)


WeightFormat = Literal["bf16", "fp16", "fp32", "fp8", "int8", "mxfp8", "mxfp4", "nvfp4", "int4"]


class ModelMemory(Strict):
    """The checkpoint's bytes by kind, as stored, for planning without a local copy.

    A local checkpoint dir is read instead (config.json and safetensors headers). Each size is
    what the files hold (scales included); the planner converts to what a GPU holds from
    `format` and the profile's native formats.
    """

    expert_gb: float = Field(ge=0, le=MAX_GB, description="routed MoE experts: sharded over all GPUs of a worker (EP, or TP without EP)")
    dense_gb: float = Field(
        ge=0, le=MAX_GB, description="attention, shared experts, dense MLPs, norms, routers: sharded over TP, replicated on every DP rank"
    )
    embed_gb: float = Field(0, ge=0, le=MAX_GB, description="input embeddings + LM head: sharded over TP, replicated on every DP rank")
    format: WeightFormat = Field(description="storage format of the expert and dense weights (e.g. mxfp8, fp8, nvfp4, bf16)")
    embed_format: WeightFormat = Field("bf16", description="storage format of the embeddings and LM head")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's config.json, or the fields the KV cache needs: num_hidden_layers, hidden_size, "
        "num_attention_heads, num_key_value_heads, head_dim, vocab_size (MLA: kv_lora_rank, qk_rope_head_dim; "
        "sliding window: sliding_window, layer_types); without it only the weights are checked",
    )


class ModelSpec(Strict):
    path: str = Field(description="local checkpoint dir, HF cache snapshot, or HF repo id (org/name)")
    served_name: Optional[str] = Field(None, description="name clients request; defaults to the path's last part")
    stage_dir: Optional[str] = Field(
        None, description="shared dir to stage the checkpoint into once, under a lock, before serving offline"
    )
    weights_gb: Optional[float] = Field(
        None, gt=0, le=MAX_GB, description="checkpoint size in GB, when neither a local checkpoint nor model.memory says more: "
        "the memory check then spreads it over each worker's GPUs (a lower bound)"
    )
    memory: Optional[ModelMemory] = Field(
        None, description="where the checkpoint's bytes are, for the memory planner when the checkpoint is not local"
    )
    node_cache: Optional[NodeCacheSpec] = Field(
        None, description="copy the staged checkpoint onto every node's local disk at job start and serve that copy"
    )

    @model_validator(mode="after")
    def _cache_needs_stage(self) -> "ModelSpec":
        if self.node_cache is not None and self.node_cache.on and not self.stage_dir:
            raise ValueError("node_cache copies the staged checkpoint onto each node: set model.stage_dir too "
                             "(or model.node_cache.mode: off)")
        return self

    @property
    def name(self) -> str:
        return self.served_name or self.path.rstrip("/").split("/")[-1]


class ContainerRuntime(str, Enum):
    pyxis = "pyxis"
    none = "none"


class ContainerSpec(Strict):
    image: Optional[str] = Field(None, description="image URI or .sqsh path (runtime pyxis)")
    runtime: ContainerRuntime = Field(ContainerRuntime.none, description="pyxis on production clusters; none runs bare processes")
    image_dir: Optional[str] = Field(None, description="shared dir where imported .sqsh images live")
    mounts: list[str] = Field(default_factory=list, description="SRC:DST container mounts")
    mount_home: bool = Field(False, description="mount the user's home (pyxis --container-mount-home); off keeps "
                             "~/.cache and ~/.local out of the engines")
    workdir: Optional[str] = Field(None, description="working dir inside the container (--container-workdir)")
    writable: Optional[bool] = Field(None, description="true: --container-writable, false: --container-readonly; "
                                     "unset: pyxis's default (the Dynamo install needs it writable)")
    env: list[str] = Field(default_factory=list, description="host variables that override the image's (--container-env)")

    @model_validator(mode="after")
    def _image_for_pyxis(self) -> "ContainerSpec":
        if self.runtime is ContainerRuntime.pyxis and not self.image:
            raise ValueError("runtime 'pyxis' needs container.image (e.g. nvcr.io#nvidia/ai-dynamo/vllm-runtime:TAG)")
        return self

    @field_validator("image")
    @classmethod
    def _image_uri(cls, v: Optional[str]) -> Optional[str]:
        if v:
            from inferx_slurm.recipe.image_uri import normalize_image_uri

            normalize_image_uri(v)  # raises with the valid forms; the recipe keeps what the user wrote
        return v


_TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


class SlurmSpec(Strict):
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    python: Optional[str] = Field(
        None, description="interpreter with inferx-slurm that runs the driver on the compute nodes, on the shared "
        "filesystem and built for their architecture (GB200: aarch64); default: the submitting interpreter"
    )
    time: str = Field("01:00:00", description="walltime: MM, HH:MM:SS or D-HH:MM:SS")
    stop_before_limit_s: float = Field(
        60, ge=0, description="end the run cleanly (partial results, logs, diagnosis) this long before the time limit"
    )
    gpus_per_node: Optional[int] = Field(None, ge=1, le=16, description="defaults to the profile's value")
    gpu_memory_gb: Optional[float] = Field(None, gt=0, le=MAX_GB, description="memory of one GPU; defaults to the profile's value")
    exclusive: bool = True
    segment: Optional[int] = Field(None, ge=1, description="GB200 NVL72: nodes per NVLink segment (--segment)")
    job_name: Optional[str] = None
    sbatch_args: dict[str, ArgValue] = Field(default_factory=dict, description="extra #SBATCH options, e.g. {reservation: x}")
    srun_args: list[str] = Field(default_factory=list, description="extra flags for every srun step")

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not _TIME_RE.match(v):
            raise ValueError("expected MM, HH:MM:SS or D-HH:MM:SS")
        return v

    @property
    def minutes(self) -> int:
        days, _, rest = self.time.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            mins = parts[0]
        elif len(parts) == 2:
            mins = parts[0] * 60 + parts[1]
        else:
            mins = parts[0] * 60 + parts[1] + math.ceil(parts[2] / 60)
        return (int(days) if days else 0) * 1440 + mins


def _auto_port(v: Any) -> Any:
    if isinstance(v, str) and not v.strip().isdigit():
        if v.strip().lower() == "auto":
            return None
        raise ValueError("expected a port number, or auto (a free port chosen on the node when the job starts)")
    return v


# A port field: a number, checked free on its node when the step starts, or auto (None, the
# default): the step takes a free one there (planning/ports.py).
Port = Annotated[Optional[int], BeforeValidator(_auto_port)]


class PlacementSpec(Strict):
    share_nodes: bool = Field(False, description="let prefill and decode workers share a node")
    frontend_node: int = Field(0, ge=0, description="node index of the frontend and discovery infra")
    port_base: Port = Field(None, ge=1024, le=60000, description="first port of the per-worker blocks of 10; auto (the "
                            "default): each worker takes a free block on each of its nodes when it starts")


class Backend(str, Enum):
    vllm = "vllm"
    sglang = "sglang"
    trtllm = "trtllm"
    mocker = "mocker"


class RoleEngine(Strict):
    args: dict[str, ArgValue] = Field(default_factory=dict, description="engine flags for this role; win over derived ones")
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: Optional[float] = Field(None, gt=0, description="time for this role to register; default per backend")

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, ArgValue]) -> dict[str, ArgValue]:
        return check_engine_args(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)


class EngineSpec(Strict):
    backend: Backend = Backend.vllm
    args: dict[str, ArgValue] = Field(default_factory=dict, description="engine flags for both roles (without the leading --)")
    env: dict[str, str] = Field(default_factory=dict)
    prefill: RoleEngine = Field(default_factory=RoleEngine)
    decode: RoleEngine = Field(default_factory=RoleEngine)
    agg: RoleEngine = Field(default_factory=RoleEngine, description="aggregated workers (topology NA SPEC)")
    python: str = Field("python3", description="interpreter that runs the engine and frontend modules")
    dynamo_install: Optional[str] = Field(
        None, description="install Dynamo (with its NIXL) into each node's container before any worker starts: a "
        "version (1.6.1) or a wheel path on the shared filesystem; for images that lack it (vllm/vllm-openai)"
    )
    require_nixl: Optional[bool] = Field(
        None, description="the preflight refuses a worker environment without NIXL; default: when KV moves over NIXL "
        "(disaggregated vllm/sglang)"
    )
    startup_timeout_s: Optional[float] = Field(None, gt=0, description="time for workers to register; default per backend")
    fabric_preflight: bool = Field(
        True, description="before any weights load, move a small NIXL transfer between every prefill and every decode "
        "node with the workers' UCX settings, and fail in seconds naming the broken pair; applies when the engines "
        "move KV over NIXL (disaggregated, NixlConnector); false skips it"
    )

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, ArgValue]) -> dict[str, ArgValue]:
        return check_engine_args(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @field_validator("dynamo_install")
    @classmethod
    def _dynamo_install(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not (re.fullmatch(r"\d+\.\d+(\.\d+)?([.+-]?[A-Za-z0-9.]+)?", v) or
                                  (v.startswith("/") and v.endswith(".whl"))):
            raise ValueError(f"got {v!r}; expected a Dynamo version (e.g. 1.6.1) or an absolute path to an ai_dynamo wheel (.whl)")
        return v

    def role(self, name: str) -> RoleEngine:
        return getattr(self, name) if name in ROLES else RoleEngine()


class SpecMethod(str, Enum):
    eagle3 = "eagle3"
    eagle = "eagle"
    mtp = "mtp"
    ngram = "ngram"


class SpeculativeSpec(Strict):
    """Speculative decoding: a draft proposes tokens that the target model verifies in one step."""

    method: SpecMethod = Field(description="eagle3 / eagle (a separate draft head), mtp (the model's own MTP layers), ngram")
    draft_model: Optional[str] = Field(
        None, description="draft checkpoint (local dir or HF repo id); required for eagle/eagle3, staged with the model"
    )
    num_speculative_tokens: int = Field(ge=1, le=64, description="tokens the draft proposes per step")
    draft_gb: Optional[float] = Field(
        None, ge=0, le=MAX_GB, description="the draft's weights (GB) for the memory planner when draft_model is not a local "
        "checkpoint it can measure; replicated on every DP rank and sharded over TP like the embeddings"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="extra keys for the engine's speculative config (vLLM --speculative-config JSON)"
    )

    @model_validator(mode="after")
    def _draft(self) -> "SpeculativeSpec":
        if self.method in (SpecMethod.eagle3, SpecMethod.eagle) and not self.draft_model:
            raise ValueError(f"method {self.method.value} needs draft_model: the draft head's checkpoint (e.g. org/Model-EAGLE3)")
        return self


class Discovery(str, Enum):
    etcd_nats = "etcd+nats"
    file = "file"


class FrontendServer(str, Enum):
    """Who answers the benchmark's clients: the Dynamo frontend, or the engine's own server."""

    dynamo = "dynamo"
    engine = "engine"


class FrontendSpec(Strict):
    infra_bin_dir: Optional[str] = Field(
        None, description="dir holding the etcd and nats-server binaries the infra step runs (on the host, not in "
        "the engine image, which has neither); unset: the host's PATH. setup_scripts/provision_infra_bins.sh fills one"
    )
    server: FrontendServer = Field(
        FrontendServer.dynamo,
        description="dynamo: the Dynamo frontend routes to the workers (needed for disaggregation); engine: the engine's "
        "own OpenAI server (vllm serve, sglang.launch_server) on http_port of its node, for one aggregated worker",
    )
    router_mode: Literal["round-robin", "random", "kv"] = "round-robin"
    discovery: Discovery = Discovery.etcd_nats
    http_port: Port = Field(None, ge=1, le=65535, description="the OpenAI HTTP port the clients use; auto: one chosen at start")
    etcd_port: Port = Field(None, ge=1, le=65534, description="etcd's client port (the next one is its peer port); auto: chosen at start")
    nats_port: Port = Field(None, ge=1, le=65535, description="NATS's port; auto: chosen at start")
    args: dict[str, ArgValue] = Field(default_factory=dict, description="extra dynamo.frontend flags")


class Scenario(Strict):
    isl: int = Field(ge=1, description="input sequence length (tokens)")
    osl: int = Field(ge=1, description="output sequence length (tokens)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            m = re.fullmatch(r"\s*(\d+)(k?)(\d+)(k?)\s*", data.lower()) or re.fullmatch(
                r"\s*(\d+)(k?)\s*/\s*(\d+)(k?)\s*", data.lower()
            )
            if not m:
                raise ValueError("expected {isl: N, osl: M} or a name like '8k1k' or '1024/1024'")
            isl = int(m.group(1)) * (1024 if m.group(2) else 1)
            osl = int(m.group(3)) * (1024 if m.group(4) else 1)
            return {"isl": isl, "osl": osl}
        return data

    @property
    def name(self) -> str:
        def short(n: int) -> str:
            return f"{n // 1024}k" if n % 1024 == 0 else str(n)

        if self.isl % 1024 == 0 and self.osl % 1024 == 0:
            return f"{short(self.isl)}{short(self.osl)}"
        return f"isl{self.isl}-osl{self.osl}"


class ValidityLimits(Strict):
    """When a finished point is no result: beyond these it is marked invalid, not reported as
    throughput (`results/validity.py` has every rule)."""

    max_error_rate: float = Field(0.01, ge=0, le=1, description="largest share of a point's requests that may fail")
    # Room for an engine that computes a prompt's last token itself; a fallback recomputes all.
    max_recomputed_share: float = Field(
        0.01, ge=0, le=1,
        description="largest share of prompt tokens a disaggregated decode worker may compute itself instead of receiving its KV",
    )


class BenchmarkSpec(Strict):
    client: Literal["aiperf"] = "aiperf"
    client_command: str = Field("aiperf", description="the aiperf executable (a path when it lives in its own venv)")
    scenarios: list[Scenario] = Field(default_factory=lambda: [Scenario(isl=1024, osl=1024)], min_length=1)
    concurrency: list[int] = Field(default_factory=lambda: [1], min_length=1)
    requests_per_concurrency: int = Field(10, ge=1, description="requests = max(min_requests, this x concurrency)")
    min_requests: int = Field(20, ge=1)
    warmup_requests: int = Field(0, ge=0)
    stall_timeout_s: float = Field(120, gt=0, description="fail when no token or request completes for this long")
    client_startup_timeout_s: float = Field(300, gt=0, description="fail when the client sends no request for this long")
    tokenizer: Optional[str] = Field(None, description="tokenizer the client counts tokens with; defaults to model.path")
    gpu_metrics_interval_s: Optional[float] = Field(1.0, gt=0, description="NVML sampling period per node; null turns sampling off")
    args: dict[str, ArgValue] = Field(default_factory=dict, description="extra client flags")
    validity: ValidityLimits = Field(default_factory=ValidityLimits, description="when a finished point counts as invalid")

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c < 1]
        if bad:
            raise ValueError(f"concurrency values must be >= 1, got {bad}")
        return sorted(set(v))

    def requests_for(self, concurrency: int) -> int:
        return max(self.min_requests, self.requests_per_concurrency * concurrency)


class ExpectSpec(Strict):
    """What the run must be running on. Every worker checks its own environment against these
    before it loads weights; a mismatch ends the run within seconds, naming both values."""

    dynamo_version: Optional[str] = Field(None, description="ai-dynamo version inside the worker's environment, e.g. 1.6.1")
    engine_version: Optional[str] = Field(None, description="the backend's package version (vllm, sglang, tensorrt-llm; ai-dynamo for mocker)")
    nixl_version: Optional[str] = Field(None, description="nixl package version inside the worker's environment")
    model_revision: Optional[str] = Field(
        None, description="HF snapshot commit (a prefix of at least 7 characters is enough) or config-sha256:HEX of config.json"
    )
    image_digest: Optional[str] = Field(
        None, description="sha256:HEX the image must have: the URI's pinned digest or the imported squashfs file's sha256"
    )

    @field_validator("image_digest")
    @classmethod
    def _digest(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", v):
            raise ValueError("expected sha256: followed by 64 lowercase hex digits")
        return v

    @field_validator("model_revision")
    @classmethod
    def _revision(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"[0-9a-f]{7,40}|config-sha256:[0-9a-f]{7,64}", v):
            raise ValueError("expected a commit hash (7-40 hex digits) or config-sha256:HEX")
        return v

    def worker_checks(self) -> dict[str, str]:
        """The pins a worker checks inside its own environment (the image is checked at submit)."""
        return {k: v for k, v in self.model_dump().items() if v is not None and k != "image_digest"}
