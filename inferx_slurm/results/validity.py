"""Is a finished benchmark point a result? Pure: the point's row, what the decode engines'
counters moved by over the point, and the recipe's limits in; a verdict with its reasons out.

A disaggregated run fails silently more often than loudly: the KV transfer fails or falls back,
decode recomputes every prompt, and the client still measures a (wrong) number. So a point is
INVALID, and no throughput, when any of these holds:
- no output token came back, or more requests failed than `benchmark.validity.max_error_rate`;
- the client asked the engine to ignore EOS and some output is shorter than the scenario's OSL;
- disaggregated, with the decode engines' KV counters measured: a transfer failed, no transfer
  happened, or decode computed more than `max_recomputed_share` of its prompt tokens itself.
Where the engine exposes no KV counters the transfer is "not measured": never a pass.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from inferx_slurm.recipe.sections import ValidityLimits

# `launch --wait` and `ci` exit with this when every point ran but some is invalid.
EXIT_INVALID = 7


class Reason(str, Enum):
    no_output = "no output tokens"
    error_rate = "error rate above the limit"
    short_output = "outputs shorter than OSL"
    transfer_failed = "KV transfers failed"
    no_transfer = "no KV transfer"
    recomputed = "decode recomputed the prompts"


class KVStatus(str, Enum):
    verified = "verified"
    failed = "failed"
    not_measured = "not measured"
    not_applicable = "not applicable"  # aggregated: no KV moves between engines


class KVCounters(BaseModel):
    """The decode engines' KV counters, summed over engines; None: the series is absent."""

    model_config = ConfigDict(frozen=True)

    transfers: Optional[float] = None
    failed: Optional[float] = None
    bytes: Optional[float] = None
    external_hits: Optional[float] = None
    prompt_local: Optional[float] = None
    prompt_external: Optional[float] = None

    def minus(self, before: "KVCounters") -> "KVCounters":
        """What moved over a point. A series absent before starts at 0 (engines create some
        only at their first event); one absent after stays absent."""
        out = {}
        for k, v in self.model_dump().items():
            b = getattr(before, k)
            out[k] = None if v is None else max(v - (b or 0.0), 0.0)
        return KVCounters(**out)

    @property
    def measured(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


# Row keys of the counters, for the results and their consumers.
KV_ROW_KEYS = {
    "transfers": "kv_transfers",
    "failed": "kv_transfer_failures",
    "bytes": "kv_bytes_transferred",
    "external_hits": "kv_external_prefix_hits",
    "prompt_local": "decode_prompt_tokens_local",
    "prompt_external": "decode_prompt_tokens_external",
}


class PointValidity(BaseModel):
    model_config = ConfigDict(frozen=True)

    reasons: list[Reason]
    why: list[str]
    kv_transfer: KVStatus
    kv: Optional[KVCounters] = None

    @property
    def valid(self) -> bool:
        return not self.reasons

    def row_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": self.valid, "invalid_reasons": [r.value for r in self.reasons],
                               "invalid_why": list(self.why), "kv_transfer": self.kv_transfer.value}
        if self.kv is not None:
            out.update({KV_ROW_KEYS[k]: None if v is None else int(v) for k, v in self.kv.model_dump().items()})
        return out


def judge(
    row: dict[str, Any], *, osl: int, ignore_eos: bool, disaggregated: bool, kv_known: bool, kv: Optional[KVCounters],
    limits: ValidityLimits,
) -> PointValidity:
    """The verdict on one point. `kv_known`: the engine names KV-transfer counters at all;
    `kv`: what they moved by over the point on the decode engines (None: none answered)."""
    reasons: list[Reason] = []
    why: list[str] = []

    def add(reason: Reason, text: str) -> None:
        reasons.append(reason)
        why.append(text)

    completed, failed = int(row.get("completed") or 0), int(row.get("failed") or 0)
    out_tokens = row.get("total_output_tokens", row.get("output_throughput"))
    if not out_tokens:
        add(Reason.no_output, f"no output token came back ({completed} requests completed)")
    if completed + failed and failed / (completed + failed) > limits.max_error_rate:
        add(Reason.error_rate, f"{failed} of {completed + failed} requests failed, above benchmark.validity.max_error_rate "
                               f"{limits.max_error_rate:g}")
    lens = row.get("output_lens") or []
    short = [n for n in lens if n < osl]
    if ignore_eos and short and out_tokens:
        add(Reason.short_output, f"{len(short)} of {len(lens)} outputs are shorter than OSL {osl} (shortest {min(short)}) "
                                 "although the client asked the engine to ignore EOS")
    status = _kv_verdict(disaggregated, kv_known, kv, limits, add)
    measured = status in (KVStatus.verified, KVStatus.failed)
    return PointValidity(reasons=reasons, why=why, kv_transfer=status, kv=kv if measured else None)


def _kv_verdict(disaggregated: bool, kv_known: bool, kv: Optional[KVCounters], limits: ValidityLimits, add) -> KVStatus:
    if not disaggregated:
        return KVStatus.not_applicable
    if not kv_known or kv is None or not kv.measured:
        return KVStatus.not_measured
    bad = False
    if kv.failed:
        add(Reason.transfer_failed, f"{int(kv.failed)} KV transfers failed on decode")
        bad = True
    local, external = kv.prompt_local or 0.0, kv.prompt_external or 0.0
    if local + external and local / (local + external) > limits.max_recomputed_share:
        add(Reason.recomputed, f"decode computed {int(local)} of {int(local + external)} prompt tokens itself instead of "
                               f"receiving their KV (above benchmark.validity.max_recomputed_share {limits.max_recomputed_share:g})")
        bad = True
    if not kv.transfers and not external:
        add(Reason.no_transfer, "no KV block reached decode from prefill (0 transfers)")
        bad = True
    return KVStatus.failed if bad else KVStatus.verified


# ---- reading verdicts back from rows ------------------------------------------------------------


def point_name(row: dict[str, Any]) -> str:
    return f"ISL {row.get('isl')} OSL {row.get('osl')} conc {row.get('concurrency')}"


def invalid_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows judged invalid; a row from before these checks (no `valid` key) is not."""
    return [r for r in rows if r.get("valid") is False]


def invalid_line(row: dict[str, Any]) -> str:
    return f"{point_name(row)}: INVALID ({'; '.join(row.get('invalid_why') or row.get('invalid_reasons') or [])})"


def transfer_line(row: dict[str, Any]) -> Optional[str]:
    """One line on a disaggregated point's KV transfer; None for an aggregated one."""
    status = row.get("kv_transfer")
    if status in (None, KVStatus.not_applicable.value):
        return None
    if status == KVStatus.not_measured.value:
        return f"{point_name(row)}: KV transfer not measured (the engine exposes no transfer counters)"

    def n(key: str) -> str:
        v = row.get(key)
        return "-" if v is None else f"{v:,}"

    moved = ("no transfer counters on decode" if row.get("kv_transfers") is None else
             f"{n('kv_transfers')} transfers, {n('kv_transfer_failures')} failed, {n('kv_bytes_transferred')} bytes")
    return (f"{point_name(row)}: KV transfer {status}: {moved}; decode prompt tokens {n('decode_prompt_tokens_external')} "
            f"received, {n('decode_prompt_tokens_local')} computed locally")
