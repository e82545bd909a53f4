"""Is the deployment up? The frontend must list the model AND every planned worker must be
registered; a frontend that serves the model with half the workers is not ready."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Optional


def http_get(url: str, timeout: float = 2.0) -> Optional[tuple[int, bytes]]:
    """(status, body) of a GET, error statuses included; None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b""
    except (urllib.error.URLError, OSError):
        return None


def http_json(url: str, timeout: float = 2.0) -> Optional[Any]:
    got = http_get(url, timeout)
    if got is None or got[0] != 200:
        return None
    try:
        return json.loads(got[1].decode() or "null")
    except ValueError:
        return None


def served_models(base_url: str) -> list[str]:
    doc = http_json(f"{base_url}/v1/models")
    if not isinstance(doc, dict):
        return []
    return [m.get("id", "") for m in doc.get("data", []) if isinstance(m, dict)]


def accepted_workers(base_url: str, model: str) -> Optional[dict[str, int]]:
    """Workers per role that the frontend accepted for `model`, from /v1/models/{model}/ready.

    Only accepted workers count: /health also lists workers the frontend rejected (an
    incompatible model card) and ones killed up to a discovery lease ago. None when the
    frontend has no such endpoint (older Dynamo).
    """
    got = http_get(f"{base_url}/v1/models/{model}/ready")
    if got is None:
        return {"prefill": 0, "decode": 0, "agg": 0}
    code, body = got
    # 503: not every worker type is live yet (the body still counts them); 404 with
    # "Model not found": no worker yet; any other 404: no such endpoint.
    if code == 404:
        return {"prefill": 0, "decode": 0, "agg": 0} if b"Model not found" in body else None
    try:
        doc = json.loads(body.decode() or "null")
    except ValueError:
        return {"prefill": 0, "decode": 0, "agg": 0}
    counts = {"prefill": 0, "decode": 0, "agg": 0}
    for ns in (doc or {}).get("namespaces", {}).values():
        for kind, info in (ns.get("worker_types") or {}).items():
            role = "agg" if kind == "aggregated" else kind
            if role in counts and isinstance(info, dict):
                counts[role] += int(info.get("workers", 0))
    return counts


def registered_workers(base_url: str) -> dict[str, int]:
    """Registered engine instances per role, from the frontend's /health instance list.

    Each worker registers one instance per endpoint it serves; counting distinct instance ids
    on the `generate` endpoint counts workers. Prefill workers register under a component
    whose name contains 'prefill'; every other generate instance is a decode worker.
    """
    doc = http_json(f"{base_url}/health")
    counts = {"prefill": 0, "decode": 0}
    if not isinstance(doc, dict):
        return counts
    seen: set[tuple[str, Any]] = set()
    for inst in doc.get("instances", []) or []:
        if not isinstance(inst, dict) or inst.get("endpoint") != "generate":
            continue
        role = "prefill" if "prefill" in str(inst.get("component", "")).lower() else "decode"
        key = (role, inst.get("instance_id"))
        if key not in seen:
            seen.add(key)
            counts[role] += 1
    return counts
