"""What the engine flags and environments a recipe writes may hold: checked at load, so a typo
or a value the launcher would replace stops before any job exists."""

from __future__ import annotations

from typing import Any

# Engine flags that take a count of tokens, sequences or blocks in every engine that has them.
# The launcher derives other values from some (max_model_len from the block size), so a typo
# here must stop at load time rather than as an engine crash on the cluster.
WHOLE_NUMBER_ARGS = {
    "block-size": "tokens per KV block, e.g. 16, 64 or 128",
    "page-size": "tokens per KV page, e.g. 16, 64 or 128",
    "tokens-per-block": "tokens per KV block, e.g. 32 or 64",
    "kv-block-size": "tokens per KV block, e.g. 32 or 64",
    "max-num-seqs": "sequences per batch, e.g. 256",
    "max-running-requests": "sequences per batch, e.g. 256",
    "max-num-batched-tokens": "tokens per scheduler step, e.g. 16384",
    "max-model-len": "tokens per sequence, e.g. 9472",
    "context-length": "tokens per sequence, e.g. 9472",
    "max-seq-len": "tokens per sequence, e.g. 9472",
}


# Ports each worker's script sets from its port block, after the recipe's environment: a value
# written in env would be silently replaced, so it is refused where it is written.
WORKER_PORT_ENV = {
    "DYN_SYSTEM_PORT": "the worker's health and metrics port",
    "VLLM_NIXL_SIDE_CHANNEL_PORT": "the worker's NIXL side-channel port",
}


def check_env(v: dict[str, str]) -> dict[str, str]:
    for key in v:
        if key in WORKER_PORT_ENV:
            raise ValueError(f"{key} is {WORKER_PORT_ENV[key]}, set by the launcher from each worker's port block: remove it "
                             "from env, and set placement.port_base to fix the blocks' ports (auto: free ones taken on each node)")
    return v


def check_engine_args(v: dict[str, Any]) -> dict[str, Any]:
    v = {k.lstrip("-"): val for k, val in v.items()}
    for key, what in WHOLE_NUMBER_ARGS.items():
        val = v.get(key)
        if val is None or val is False:  # left out of the command line, like any other flag
            continue
        ok = (isinstance(val, int) and not isinstance(val, bool) and val >= 1) or (
            isinstance(val, str) and val.strip().isdigit() and int(val) >= 1
        )
        if not ok:
            raise ValueError(f"{key}: got {val!r}; expected a whole number >= 1 ({what})")
    return v
