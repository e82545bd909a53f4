"""Which worker served which request, read from the workers' logs.

The Dynamo runtime logs `request completed request_id=...` in every engine process it
hands a request to, so the same id in a prefill log and a decode log proves that request
went through both stages.
"""

from __future__ import annotations

import re
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DONE = re.compile(r"request completed\s+request_id=([0-9a-fA-F-]{8,})")


def completed_request_ids(log: Path) -> set[str]:
    ids: set[str] = set()
    if not log.exists():
        return ids
    with open(log, errors="replace") as f:
        for line in f:
            m = _DONE.search(_ANSI.sub("", line))
            if m:
                ids.add(m.group(1))
    return ids


def served_requests(log_dir: Path, leaders: dict[str, str]) -> dict[str, object]:
    """leaders: worker name -> role. Returns per-worker counts and how many went through both roles."""
    per_worker: dict[str, int] = {}
    by_role: dict[str, set[str]] = {"prefill": set(), "decode": set()}
    for worker, role in leaders.items():
        ids = completed_request_ids(log_dir / f"{worker}.n0.log")
        per_worker[worker] = len(ids)
        by_role.setdefault(role, set()).update(ids)
    out: dict[str, object] = {
        "per_worker": per_worker,
        "prefill_requests": len(by_role["prefill"]),
        "decode_requests": len(by_role["decode"]),
        "through_prefill_and_decode": len(by_role["prefill"] & by_role["decode"]),
    }
    if "agg" in by_role:
        out["agg_requests"] = len(by_role["agg"])
    return out
