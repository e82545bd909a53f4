"""Progress from the frontend's Prometheus metrics, to tell a slow benchmark from a stuck one."""

from __future__ import annotations

from typing import Optional

from inferx_slurm import engines
from inferx_slurm.runtime.readiness import http_get

# Counters that only grow while requests make progress: the Dynamo frontend's, or those of the
# engine's own server (vLLM, SGLang) when it answers the clients itself.
PROGRESS_METRICS = ("dynamo_frontend_output_tokens_total", "dynamo_frontend_requests_total", *engines.PROGRESS_METRICS)
# Requests accepted (or prompts processed): tells a client still starting up from a stuck engine.
STARTED_METRICS = ("dynamo_frontend_requests_started_total", *engines.STARTED_METRICS)
# Requests answered in full.
DONE_METRICS = ("dynamo_frontend_requests_total", *engines.DONE_METRICS)
# The engines' speculative-decoding counters: mean acceptance length = 1 + accepted / drafts.
SPEC_ACCEPTED = engines.SPEC_ACCEPTED
SPEC_DRAFTS = engines.SPEC_DRAFTS


def has_metric(text: str, names: tuple[str, ...]) -> bool:
    return any(line.split("{", 1)[0].split(" ", 1)[0] in names for line in text.splitlines() if line and not line.startswith("#"))


def scrape(url: str, timeout: float = 2.0) -> Optional[str]:
    got = http_get(url, timeout)
    return got[1].decode(errors="replace") if got and got[0] == 200 else None


def counter_total(text: str, names: tuple[str, ...] = PROGRESS_METRICS) -> float:
    """Sum of the named counters; failed requests are not progress, so error-labelled samples are skipped."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if 'status="error"' in line or ('status="' in line and 'status="success"' not in line):
            continue
        if name in names:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total
