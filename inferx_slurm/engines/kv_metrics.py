"""What an engine's Prometheus metrics say about its KV cache: the series that prove (or
disprove) a KV transfer from prefill to decode, and the one that gives its KV capacity.

Each backend module names its own series (``KV_TRANSFER``, ``KV_CAPACITY``; None where the
engine exposes none, which the results then call "not measured").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Series:
    """One Prometheus series: a metric name, optionally narrowed to one label value."""

    name: str
    label: Optional[tuple[str, str]] = None


@dataclass(frozen=True)
class KVTransferMetrics:
    """Counters on the worker that reads the KV blocks (decode), summed over its engines."""

    transfers: Series  # successful transfers
    failed: Series  # failed transfers (handshake, read or notification)
    bytes: Series  # bytes moved
    external_hits: Series  # prompt tokens found in the other engine's cache (counted at scheduling)
    prompt_local: Series  # prompt tokens this engine computed itself: recomputed on decode
    prompt_external: Series  # prompt tokens that arrived over the connector


@dataclass(frozen=True)
class KVCapacityMetric:
    """Where an engine reports how many tokens its KV cache holds: a gauge, or a label of an
    info metric (`tokens_label`), else blocks x block size from two labels; and the start-up
    log line that says the same (group 1: the tokens, thousands separators allowed)."""

    metric: str
    log_pattern: str
    tokens_label: Optional[str] = None
    blocks_labels: Optional[tuple[str, str]] = None
