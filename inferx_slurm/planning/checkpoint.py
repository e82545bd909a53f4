"""Reading a local checkpoint's layout without reading its weights.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming
every tensor's dtype, shape and byte range; `model.safetensors.index.json` maps tensor names to
shard files. Reading those headers and `config.json` gives every tensor's dtype and shape for a
checkpoint of hundreds of GB in milliseconds, with no weight byte read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from inferx_slurm.errors import RecipeError

INDEX_NAME = "model.safetensors.index.json"
# safetensors refuses headers above 100 MB; a larger length means a corrupt or non-safetensors file.
MAX_HEADER_BYTES = 100_000_000


class TensorInfo(NamedTuple):
    # A plain tuple: a large MoE checkpoint names tens of thousands of tensors.
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    """What the planner needs from a checkpoint dir: its config and every tensor's dtype and shape."""

    path: str
    config: dict[str, Any]
    tensors: list[TensorInfo]
    shards: int


def read_checkpoint(path: str | Path) -> Optional[Checkpoint]:
    """The checkpoint at `path`, or None when `path` is no local dir holding safetensors shards."""
    root = Path(path)
    try:
        if not root.is_dir():
            return None
    except OSError:  # a name too long for this filesystem: a repo id or a typo, nothing local
        return None
    shards = _shard_files(root)
    if not shards:
        return None
    tensors: list[TensorInfo] = []
    for shard in shards:
        tensors.extend(read_header(shard))
    return Checkpoint(path=str(root), config=_read_config(root), tensors=tensors, shards=len(shards))


def read_header(shard: Path) -> list[TensorInfo]:
    """The tensors one safetensors file holds, from its header alone."""
    try:
        with open(shard, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RecipeError("model.path", str(shard), "is not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise RecipeError("model.path", str(shard), f"is not a safetensors file (header length {length} B)")
            raw = f.read(length)
    except OSError as e:
        raise RecipeError("model.path", str(shard), f"cannot be read ({e.strerror}); check the checkpoint dir") from None
    if len(raw) < length:
        raise RecipeError("model.path", str(shard), "is truncated inside its safetensors header; re-download or re-stage it")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecipeError("model.path", str(shard), f"has a safetensors header that is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise RecipeError("model.path", str(shard), "has a safetensors header that is not a JSON object")
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = meta["data_offsets"]
            out.append(TensorInfo(name, str(meta["dtype"]).upper(), tuple(meta["shape"]), int(end) - int(begin)))
        except (KeyError, TypeError, ValueError):
            raise RecipeError("model.path", str(shard), f"has a malformed header entry for tensor {name!r}") from None
    return out


def _shard_files(root: Path) -> list[Path]:
    index = root / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise RecipeError("model.path", str(index), "is not a valid safetensors index (needs a 'weight_map' object)") from None
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise RecipeError("model.path", str(root), f"{INDEX_NAME} names shards that are missing: {', '.join(missing[:3])}"
                              f"{' ...' if len(missing) > 3 else ''}; finish the download or staging")
        return [root / n for n in names]
    return sorted(root.glob("*.safetensors"))


def _read_config(root: Path) -> dict[str, Any]:
    cfg = root / "config.json"
    if not cfg.is_file():
        return {}
    try:
        doc = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise RecipeError("model.path", str(cfg), f"is not valid JSON ({e})") from None
    return doc if isinstance(doc, dict) else {}
