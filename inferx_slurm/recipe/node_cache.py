"""`model.node_cache`: the staged weights copied onto every node's local disk before serving.

The recipe (or site) names a node-local directory, how much of it the cache may hold, and what a
node whose disk cannot hold the model does. Sizes and the ``{node}`` placeholder are parsed here,
with no I/O: the nodes resolve a percentage against their own disk.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

# Replaced on each node by its Slurm node name, for clusters whose nodes share one disk (the
# local test cluster): each node then keeps its own cache.
NODE_PLACEHOLDER = "{node}"
DEFAULT_CAP = "80%"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNITS = "KMGTP"
SIZE_FORMS = "bytes (e.g. 800G, 1.5T, 750GiB, 2000000000) or a percent of the disk (e.g. 80%)"


class NodeCacheMode(str, Enum):
    optional = "optional"  # a node that cannot hold the model reads the shared copy, with a warning
    required = "required"  # the job fails instead
    off = "off"  # no node cache (a recipe opting out of its site's)


def parse_size(text: Union[int, str]) -> int:
    """Bytes from ``800G`` (decimal units), ``750GiB`` (binary) or a plain count."""
    if isinstance(text, bool):
        raise ValueError(f"expected {SIZE_FORMS}")
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"expected a positive size: {SIZE_FORMS}")
        return text
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise ValueError(f"expected {SIZE_FORMS}")
    number, unit, binary = float(m[1]), m[2].upper(), bool(m[3])
    if binary and not unit:
        raise ValueError(f"expected {SIZE_FORMS}")
    scale = (1024 if binary else 1000) ** (_UNITS.index(unit) + 1) if unit else 1
    value = int(number * scale)
    if value < 1:
        raise ValueError(f"expected a positive size: {SIZE_FORMS}")
    return value


def parse_percent(text: Union[int, str]) -> Optional[float]:
    """The percentage of ``"80%"``, or None when ``text`` is a size."""
    if not isinstance(text, str):
        return None
    m = _PERCENT_RE.match(text)
    if m is None:
        return None
    pct = float(m[1])
    if not 0 < pct <= 100:
        raise ValueError("a percent of the disk must be above 0% and at most 100%")
    return pct


def cap_bytes(cap: Union[int, str], disk_bytes: int) -> int:
    """What the cache may hold on a disk of ``disk_bytes``."""
    pct = parse_percent(cap)
    return int(disk_bytes * pct / 100) if pct is not None else parse_size(cap)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def expand_dir(template: str, node: str) -> str:
    return template.replace(NODE_PLACEHOLDER, node)


def mount_root(template: str) -> str:
    """The part of the cache dir every node shares: what a container mounts to see its node's cache."""
    if NODE_PLACEHOLDER not in template:
        return template.rstrip("/") or "/"
    head = template.split(NODE_PLACEHOLDER, 1)[0]
    parent = head if head.endswith("/") else head.rsplit("/", 1)[0] + "/"
    return parent.rstrip("/") or "/"


class NodeCacheSpec(BaseModel):
    """Where each node keeps its own copy of the staged weights, and how much it may keep."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    dir: str = Field(description="node-local directory for the weights (e.g. NVMe), the same path on every node; "
                     "{node} is replaced by the Slurm node name where nodes share one disk (a test cluster)")
    cap: Union[int, str] = Field(DEFAULT_CAP, description=f"how much the cache may hold: {SIZE_FORMS}; the least "
                                 "recently served models are evicted to make room, never one a running job uses")
    mode: NodeCacheMode = Field(NodeCacheMode.optional, description="optional: a node whose disk cannot hold the model "
                                "(or fails) reads the shared copy, with a warning in the job's status; required: the "
                                "job fails instead; off: no node cache")
    workers: int = Field(8, ge=1, le=64, description="files each node copies at once")
    copy_gb_per_s: float = Field(2.0, gt=0, le=1000, description="per-node copy rate that plan and --dry-run assume "
                                 "for the estimated copy time (the shared filesystem's read rate with every node "
                                 "copying at once, or the local disk's write rate, whichever is lower)")

    @field_validator("dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("expected an absolute node-local path, e.g. /local/nvme/inferx-models")
        rest = v.replace(NODE_PLACEHOLDER, "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"the only placeholder is {NODE_PLACEHOLDER} (the Slurm node name)")
        if v.count(NODE_PLACEHOLDER) > 1:
            raise ValueError(f"{NODE_PLACEHOLDER} may appear once")
        return v

    @field_validator("cap")
    @classmethod
    def _cap(cls, v: Union[int, str]) -> Union[int, str]:
        if parse_percent(v) is None:
            parse_size(v)
        return v

    @field_serializer("mode")
    def _ser_mode(self, v: NodeCacheMode) -> str:
        # Site settings are shown and merged as plain values.
        return v.value

    @property
    def on(self) -> bool:
        return self.mode is not NodeCacheMode.off
